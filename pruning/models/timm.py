"""Any timm model as ``timm/<name>``, built without pretrained weights."""
from __future__ import annotations

from torch import nn

from ..errors import PruneBenchError
from .registry import register_family


@register_family("timm/", "timm/<name>")
def create_timm(name: str, num_classes: int, in_chans: int, input_size: int) -> nn.Module:
    import timm  # heavy optional import: paid only when a timm model is built
    if not timm.list_models(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise PruneBenchError(f"unknown timm model {name!r}{hint}")
    kwargs = dict(pretrained=False, num_classes=num_classes, in_chans=in_chans)
    try:
        try:
            return timm.create_model(name, img_size=input_size, **kwargs)
        except TypeError:  # convolutional families take any input size and have no img_size argument
            return timm.create_model(name, **kwargs)
    except Exception as e:  # e.g. a window or patch size that does not fit the input size
        text = str(e).strip().splitlines()
        raise PruneBenchError(f"timm model {name!r} cannot be built for {input_size}x{input_size} inputs: "
                              f"{type(e).__name__}: {text[0] if text else ''}")
