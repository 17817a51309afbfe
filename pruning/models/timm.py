"""Any timm model as ``timm/<name>``, built without pretrained weights.

``kwargs`` (``model.kwargs`` in params.yaml, ``--model-kwargs`` on the command line) go to ``timm.create_model``:
that is how a model trained from scratch on small inputs gets a geometry that suits them, e.g. a DeiT at 32x32 with
``patch_size: 4`` (64 tokens instead of 4).  Local pretrained weights need the original geometry (no kwargs).
"""
from __future__ import annotations

from torch import nn

from ..errors import PruneBenchError, first_line
from .registry import register_family


@register_family("timm/", "timm/<name>")
def create_timm(name: str, num_classes: int, in_chans: int, input_size: int, **kwargs) -> nn.Module:
    import timm  # heavy optional import: paid only when a timm model is built
    if not timm.list_models(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise PruneBenchError(f"unknown timm model {name!r}{hint}")
    base = dict(pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    try:
        try:
            return timm.create_model(name, img_size=input_size, **base)
        except TypeError as e:
            if not _rejects(e, "img_size"):
                raise
            # convolutional families take any input size and have no img_size argument
            return timm.create_model(name, **base)
    except TypeError as e:  # a keyword the model does not take
        raise PruneBenchError(f"timm model {name!r} does not take model kwargs {sorted(kwargs)}: {first_line(e)}")
    except Exception as e:  # e.g. a window or patch size that does not fit the input size
        raise PruneBenchError(f"timm model {name!r} cannot be built for {input_size}x{input_size} inputs"
                              f"{' with ' + str(kwargs) if kwargs else ''}: {type(e).__name__}: {first_line(e)}")


def _rejects(error: TypeError, keyword: str) -> bool:
    return f"'{keyword}'" in str(error)


