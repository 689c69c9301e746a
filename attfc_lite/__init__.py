"""attfc_lite: the small library the AttFC course builds, lesson by lesson.

Lesson 00: `faces` (the synthetic face world). Lesson 01: `backbones`, `margins`, `heads`,
`train`, `verification`. Lesson 02: `memory`. Real data: `imagefolder`; AttFC's K views:
`sampling`.
"""
from .backbones import SmallResNet, embedding_resnet, make_backbone
from .faces import FaceWorld, SyntheticFaces
from .heads import FullFC, Head, make_head
from .margins import ArcFace, CombinedMargin, CosFace, make_margin
from .utils import check, default_device, seed_everything

__version__ = "0.1.0"
