"""The registry of segmentation methods: each module defines one :class:`~napari_selfseg.engine.Method`."""
from __future__ import annotations

from ..engine import Method
from . import acwe, baselines, deep_clustering_3d, feature_clustering, sgscn, supervised

_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method (a plugin of this plugin may call this too); ids are unique."""
    if method.id in _REGISTRY and _REGISTRY[method.id] is not method:
        raise ValueError(f"a method with id {method.id!r} is already registered")
    _REGISTRY[method.id] = method
    return method


def get_method(method_id: str) -> Method:
    """The method with this id, or a ValueError listing the known ids."""
    try:
        return _REGISTRY[method_id]
    except KeyError:
        raise ValueError(f"unknown method {method_id!r}; known: {', '.join(_REGISTRY)}") from None


def list_methods() -> list[str]:
    """Ids of all registered methods."""
    return list(_REGISTRY)


for _method in (feature_clustering.METHOD, *sgscn.METHODS, *acwe.METHODS, *deep_clustering_3d.METHODS,
                *supervised.METHODS, *baselines.METHODS):
    register(_method)
