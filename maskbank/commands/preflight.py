"""What ``maskbank run`` and ``maskbank demo`` check before any server starts or anything is written: the
parameters (types, ranges, choices, checkpoint names), the datasets (found, readable, labelled, one class
list) and the store location. Each problem is one line, ``error: ...`` with exit code 2, naming what to fix
(with a "did you mean" where a name is close); nothing is created."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional
from typing import TYPE_CHECKING

from maskbank.commands.stores import fail

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

    from maskbank.flows.params import RunParams
    from maskbank.flows.stages.ingest import DatasetInput
    from maskbank.storage.datasets import Dataset


def dataset_input(path: str, split: Optional[str], classes: Optional[str] = None, rename: Sequence[str] = (),
             skip_unknown: bool = False) -> DatasetInput:
    """A dataset input from the command line's words; ``classes`` is a class list file or comma-separated
    names, each ``rename`` is ``old=new``."""
    from maskbank.flows.stages.ingest import DatasetInput

    pairs = {}
    for item in rename:
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            fail(f"--rename takes old=new, got {item!r}")
        pairs[old.strip()] = new.strip()
    names = None
    if classes is not None:
        names = classes if Path(classes).is_file() else [c.strip() for c in classes.split(",") if c.strip()]
        if not names:
            fail(f"--classes: {classes!r} is neither a class list file nor comma-separated class names")
    return DatasetInput(path=path, split=split, classes=names, rename=pairs, skip_unknown=skip_unknown)


def check_device(device: str) -> None:
    """An error unless ``device`` is one a run can use here (auto, cpu, cuda, cuda:N; CUDA only when present)."""
    from maskbank.tasks.models.device import resolve_device

    try:
        resolve_device(device)
    except ValueError as e:
        fail(f"--device: {e}")


def read_params(params_file: Path | None, overrides: Mapping[str, object], options: Mapping[str, str]) -> RunParams:
    """The run's parameters: the JSON (or YAML) file, then each dotted override that is set. ``options`` maps
    a dotted parameter to the command-line option that set it, so an error names what the user typed."""
    from pydantic import ValidationError

    from maskbank.flows.params import RunParams

    base = _read_params_file(params_file) if params_file is not None else {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = base
        *parents, leaf = dotted.split(".")
        for p in parents:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                fail(f"{params_file}: {p} must be a mapping of parameters, got {child!r}")
            node = child
        node[leaf] = value
    try:
        return RunParams.model_validate(base)
    except ValidationError as e:
        fail(params_error(e, RunParams, options, params_file))


def _read_params_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        fail(f"--params {path}: {e.strerror or e}")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            fail(f"--params {path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}")
    else:
        try:
            data = json.loads(text)
        except ValueError as e:
            fail(f"--params {path}: not valid JSON: {e}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        fail(f"--params {path}: expected a mapping of stage names to parameters, got {type(data).__name__}")
    return data


def params_error(e: ValidationError, model: type[BaseModel], options: Mapping[str, str], source: Path | None) -> str:
    """One line for the first problem of a parameter validation: where it came from (the option, or the
    parameters file and the parameter's dotted name), what is wrong, and a close name for an unknown one."""
    first = e.errors()[0]
    loc = [str(p) for p in first["loc"]]
    dotted = ".".join(loc)
    where = f"--{options[dotted]}" if dotted in options else (f"{source}: {dotted}" if source else dotted)
    if first["type"] == "extra_forbidden":
        known = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"; did you mean {'.'.join([*loc[:-1], close[0]])}?" if close else f"; known: {', '.join(known)}"
        return f"{where}: unknown parameter{hint}"
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message} (got {first['input']!r})" if "input" in first and not isinstance(first["input"], dict) else f"{where}: {message}"


def _fields_at(model: type[BaseModel], path: Sequence[str]) -> list[str]:
    """The field names of the parameter model reached by following ``path`` from ``model``."""
    from pydantic import BaseModel

    for name in path:
        field = model.model_fields.get(name)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def read_datasets(inputs: Sequence[DatasetInput], role: str) -> list[Dataset]:
    """Each dataset read as the run will read it; a dataset that cannot be read, or holds no image, is an
    error naming it."""
    from maskbank.storage.datasets import DatasetError, ImageError, open_dataset

    datasets = []
    for d in inputs:
        try:
            ds = open_dataset(d.spec())
        except (DatasetError, ImageError) as e:
            said = str(e)
            fail(f"{role} dataset {said}" if said.startswith(f"{d.path}:") else f"{role} dataset {d.path}: {said}")
        except (OSError, ValueError, KeyError) as e:  # a file the reader could not parse at all
            fail(f"{role} dataset {d.path}: cannot read it ({type(e).__name__}: {e})")
        if not ds.records:
            skipped = f" ({len(ds.skipped)} skipped, e.g. {ds.skipped[0][0]}: {ds.skipped[0][1]})" if ds.skipped else ""
            fail(f"{role} dataset {d.path}: no images found{skipped}")
        datasets.append(ds)
    return datasets


def check_labelled(datasets: Sequence[Dataset], inputs: Sequence[DatasetInput]) -> None:
    """The labelled collection: one class list and background setting across its datasets, image ids that
    do not clash, and at least one image with labels."""
    first, first_input = datasets[0], inputs[0]
    for ds, d in zip(datasets[1:], inputs[1:]):
        if ds.class_names != first.class_names:
            fail(f"labelled datasets {first_input.path} and {d.path} have different class lists; give them one "
                 "(--classes) or rename classes to match (--rename)")
        if ds.has_background != first.has_background:
            fail(f"labelled datasets {first_input.path} and {d.path} differ in whether their classes include "
                 "background; set background in a dataset spec of one of them")
    seen: dict[str, str] = {}
    for ds, d in zip(datasets, inputs):
        for image_id in ds.image_ids:
            if image_id in seen:
                fail(f"image {image_id!r} is in both {seen[image_id]} and {d.path}; image ids must not clash")
            seen[image_id] = d.path
    if not any(r.labels for ds in datasets for r in ds.records):
        paths = ", ".join(d.path for d in inputs)
        fail(f"no labelled image in {paths}: pseudo-labelling needs image labels (a labels file, annotations or masks)")


@dataclass(frozen=True)
class CheckedRun:
    """What a run was checked against: the store location in canonical form (None when none was given) and
    whether a store is there already, and the datasets as the run will read them."""

    location: str | None
    store_exists: bool
    labelled: list[Dataset]
    to_label: list[Dataset]


def check_run(labelled: Sequence[DatasetInput], to_label: Sequence[DatasetInput], store: str | None) -> CheckedRun:
    """Check a run's store location (cheapest first), then read its datasets; a one-line error at the first
    problem."""
    location, exists = check_store(store) if store is not None else (None, False)
    datasets = read_datasets(labelled, "labelled")
    check_labelled(datasets, labelled)
    return CheckedRun(location, exists, datasets, read_datasets(to_label, "to-label"))


def check_store(location: str) -> tuple[str, bool]:
    """The store location in canonical form and whether a store is there; an error when the place holds
    something that is not a store."""
    import icechunk

    from maskbank.storage.arrays import error_reason
    from maskbank.storage.location import LocationError, parse_location
    from maskbank.storage.repository import NotAStoreError, probe_store

    try:
        loc = parse_location(location)
        exists = probe_store(loc)
    except (LocationError, NotAStoreError) as e:
        fail(str(e))
    except icechunk.IcechunkError as e:
        fail(f"store {location}: {error_reason(e)}")
    return str(loc), exists
