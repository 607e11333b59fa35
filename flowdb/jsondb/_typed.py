"""Typed documents: dataclasses, pydantic models (when installed) and dicts."""
import dataclasses

from flowdb._errors import DataError


def _is_pydantic(obj_or_cls):
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return hasattr(cls, "model_validate") and hasattr(cls, "model_dump")


def to_doc(obj):
    """obj as a JSON object (dict)."""
    if isinstance(obj, dict):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if _is_pydantic(obj):
        return obj.model_dump(mode="json")
    raise DataError(f"a {type(obj).__name__} is not a dataclass, a pydantic model or a dict")


def from_doc(cls, doc):
    """doc as an instance of cls (dict, a dataclass or a pydantic model)."""
    if cls is dict or cls is None:
        return doc
    if _is_pydantic(cls):
        return cls.model_validate(doc)
    if dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{k: v for k, v in doc.items() if k in names})
    raise TypeError(f"get_doc cannot build a {cls!r}")
