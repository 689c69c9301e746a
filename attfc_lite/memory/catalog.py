"""The tables the course looks sizes up in: face datasets, single-GPU capacities, training precisions
(`PRECISIONS`) and backbones (`BACKBONES`, what each adds to a training step) (lesson 02)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..checks import ArgumentError
from .head_model import DTYPE_BYTES


#: Identities of the public face datasets the course compares against.
DATASETS: dict[str, int] = {
    "MS1MV3": 93_431,
    "WebFace4M": 205_990,
    "WebFace12M": 617_970,
    "WebFace42M": 2_059_906,
}

#: Memory of common single GPUs. Cards sold as "24/40/80 GB" carry 24/40/80 GiB.
DEVICE_CAPACITIES_GIB: dict[str, float] = {"24 GB": 24.0, "40 GB": 40.0, "80 GB": 80.0}


#: Precisions of a training step. `dtype`: parameters, gradients and optimizer state;
#: `amp_dtype`: the autocast compute type (None: no autocast). "mixed_*" is how models are
#: trained (torch.autocast, fp32 master weights); "pure_*" puts everything, optimizer state
#: included, in 16 bits: a lower bound that is not how face models are trained.
PRECISIONS: dict[str, dict[str, Any]] = {
    "fp32": dict(dtype="float32", amp_dtype=None, label="fp32"),
    "mixed_fp16": dict(dtype="float32", amp_dtype="float16",
                       label="mixed fp16 (autocast, fp32 master weights)"),
    "mixed_bf16": dict(dtype="float32", amp_dtype="bfloat16",
                       label="mixed bf16 (autocast, fp32 master weights)"),
    "pure_fp16": dict(dtype="float16", amp_dtype=None,
                      label="pure fp16: weights, gradients, optimizer state all fp16 (not how models are trained)"),
    "pure_bf16": dict(dtype="bfloat16", amp_dtype=None,
                      label="pure bf16: weights, gradients, optimizer state all bf16 (not how models are trained)"),
}
#: Older spellings: a dtype name meant "everything in that dtype".
_PRECISION_ALIASES = {"float32": "fp32", "float16": "pure_fp16", "bfloat16": "pure_bf16"}


def precision_config(precision: str) -> dict[str, Any]:
    """`precision`'s entry of `PRECISIONS` with its canonical name under 'precision'.

    Accepts the names of `PRECISIONS` and, for the old dtype menu, 'float32' (= 'fp32'),
    'float16' (= 'pure_fp16') and 'bfloat16' (= 'pure_bf16').
    """
    key = str(precision).lower() if isinstance(precision, str) else None
    key = _PRECISION_ALIASES.get(key, key)
    if key not in PRECISIONS:
        raise ArgumentError("precision", f"must be one of {sorted(PRECISIONS)} (or a dtype name: "
                            f"{sorted(_PRECISION_ALIASES)}), got {precision!r}; for autocast with fp32 master "
                            f"weights use 'mixed_fp16' or 'mixed_bf16'")
    return dict(PRECISIONS[key], precision=key)


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone adds to a training step, in bytes (activations per image).

    `activation_bytes`: tensors saved for backward by one image's forward (fp32), kept from the
    forward to the backward; `mixed_activation_bytes`: the same under autocast (half-precision
    activations). `inference_bytes` / `mixed_inference_bytes`: the transient peak of one image's
    forward under no_grad, what AttFC's key encoder needs while it embeds the key images.
    All from `measure_backbone` at `image_size`; `source` says how.
    """

    name: str
    params: int
    activation_bytes: int
    mixed_activation_bytes: int
    inference_bytes: int
    mixed_inference_bytes: int
    image_size: int = 112
    source: str = ""

    def per_image(self, precision: str) -> tuple[int, int]:
        """(activation, inference) bytes per image at `precision` (see `PRECISIONS`).

        Pure 16-bit: half the fp32 figures (every saved tensor in 2 bytes), an estimate; the
        other precisions are measured.
        """
        p = precision_config(precision)
        if p["amp_dtype"]:
            return self.mixed_activation_bytes, self.mixed_inference_bytes
        scale = DTYPE_BYTES[p["dtype"]]
        return self.activation_bytes * scale // 4, self.inference_bytes * scale // 4


_BACKBONE_SOURCE = (
    "measured with attfc_lite.memory.measure_backbone on the CPU (torch 2.14, 2 cores) at 112x112, "
    "train mode, embedding 512: activations = unique storages handed to autograd's saved_tensors_hooks "
    "(parameters and the input excluded), taken as the slope between batches 2 and 4 so that what does "
    "not grow with the batch (autocast's half copies of the weights, BatchNorm statistics) drops out; "
    "inference = slope of the profiler's peak allocation of a no_grad forward (parameters frozen, as "
    "the key encoder's) between batches 8 and 16; mixed = torch.autocast('cpu', dtype=torch.bfloat16), "
    "standing in for CUDA's fp16/bf16 autocast (convolutions, PReLU and linear layers autocast in both; "
    "BatchNorm keeps its input's type)."
)

#: Backbones of face recognition at 112x112 (embedding 512). iResNet-50/100: insightface's
#: `iresnet50` / `iresnet100` layout (3x3 stem at stride 1, IBasicBlock stages [3, 4, 14, 3] /
#: [3, 13, 30, 3], BN-dropout-FC-BN output), rebuilt by `reference_backbone`; their parameter
#: counts, 43.6 M and 65.2 M, are insightface's. resnet50: `backbones.make_backbone('resnet50',
#: 512, 112)`, the torchvision ResNet-50 the library trains on GPUs (51 M of its 75 M parameters
#: are the 2048*7*7 x 512 output layer). Per image, fp32 / mixed: activations 67.4 / 33.8 MiB
#: (iResNet-50), 106.4 / 53.3 MiB (iResNet-100), 75.0 / 37.5 MiB (ResNet-50): 8.4 GiB for a
#: batch of 128 on iResNet-50 in fp32. Key-encoder forward (no_grad) peak: 12.25 / 6.1 MiB per
#: image for both iResNets, four 64 x 112 x 112 maps. What the CPU profiler cannot see (a GPU
#: library's convolution workspace, the CUDA context) comes on top.
BACKBONES: dict[str, BackboneSpec] = {
    "iresnet50": BackboneSpec("iResNet-50", 43_590_848, 70_649_856, 35_400_192, 12_845_056, 6_422_528, 112,
                              _BACKBONE_SOURCE),
    "iresnet100": BackboneSpec("iResNet-100", 65_156_160, 111_593_472, 55_872_000, 12_845_056, 6_422_528, 112,
                               _BACKBONE_SOURCE),
    "resnet50": BackboneSpec("ResNet-50 (torchvision)", 74_886_208, 78_627_840, 39_313_920, 11_239_424, 5_619_712,
                             112, _BACKBONE_SOURCE + " Mixed inference between batches 32 and 64: below that the "
                             "bf16 copy of the 51 M-parameter output layer, not the feature maps, sets the peak."),
}
