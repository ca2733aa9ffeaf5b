"""The modes of the sp24 modules (ReLU2FFN, experts) in checkpoints: load_mode restores them, without_mode drops their keys."""

from __future__ import annotations

from torch import nn

from ._args import _check_module
from ._mode import MODE_KEY, SparseMode


def load_mode(model: nn.Module, state_dict: dict) -> int:
    """Restore the modes of the ReLU2FFN and experts modules (sparse, dense_fraction, permute_tokens) from a state_dict's
    ``sp24_mode`` keys, e.g. after ``from_pretrained`` (which drops them) and :func:`convert`.

    Args:
        model (nn.Module): the converted model.
        state_dict (dict): a state_dict (or safetensors ``load_file`` result) of a converted model.

    Returns:
        int: how many modules got their mode.

    Raises:
        TypeError: model is not an nn.Module.
        KeyError: an sp24 module of model has no ``sp24_mode`` key in state_dict (the key may differ
            by a leading prefix, as ``save_pretrained`` sometimes renames the root; it must be unique).

    Example::

        >>> src = nn.Sequential(sp24.nn.ReLU2FFN(8, 16, sparse=True))
        >>> dst = nn.Sequential(sp24.nn.ReLU2FFN(8, 16))
        >>> sp24.nn.load_mode(dst, src.state_dict()), dst[0].sparse
        (1, True)
    """
    _check_module("load_mode", model)
    keys = [k for k in state_dict if k == MODE_KEY or k.endswith("." + MODE_KEY)]
    n = 0
    for name, m in model.named_modules():
        if isinstance(m, SparseMode):
            m._set_mode(state_dict[_mode_key(name, keys)])
            n += 1
    return n


def _mode_key(name: str, keys: list) -> str:
    # The exact key, else the one key that differs from it by a leading prefix (files written by
    # save_pretrained may rename the root, e.g. NemotronH's "model." -> "backbone."; PEFT adds
    # "base_model.model."): the longest tail of the module name that matches exactly one key.
    key = f"{name}.{MODE_KEY}" if name else MODE_KEY
    if key in keys:
        return key
    parts = name.split(".") if name else []
    for i in range(len(parts)):
        tail = ".".join(parts[i:]) + "." + MODE_KEY
        hits = [k for k in keys if k == tail or k.endswith("." + tail)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise KeyError(f"sp24.nn.load_mode: {key!r} is ambiguous in the state_dict: {len(hits)} keys end in "
                           f"{tail!r} ({', '.join(sorted(hits)[:4])}); pass a state_dict of this model only")
    raise KeyError(f"sp24.nn.load_mode: no {key!r} (nor one key differing from it only by a leading prefix) in the "
                   f"state_dict; was it saved from a converted model?")


def without_mode(state_dict: dict) -> dict:
    """A copy of state_dict without the ``sp24_mode`` keys of the sp24 modules, for a strict load into an
    unconverted model.

    Args:
        state_dict (dict): a converted model's state_dict.

    Returns:
        dict: the same entries without the keys named ``sp24_mode`` or ending in ``.sp24_mode``.

    Example::

        >>> sd = sp24.nn.ReLU2FFN(8, 16).state_dict()
        >>> sorted(sp24.nn.without_mode(sd))
        ['w1.weight', 'w2.weight']
    """
    return type(state_dict)((k, v) for k, v in state_dict.items()
                            if k != MODE_KEY and not k.endswith("." + MODE_KEY))

