"""A small CNN that judges which animal a 28 x 28 silhouette shows (the CLIP-score analogue).

Trained on the train split only (scripts/train_classifier.py); its weights ship next to the model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class AnimalClassifier(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.Conv2d(o, o, 3, padding=1),
                                 nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))
        self.features = nn.Sequential(block(1, 32), block(32, 64), block(64, 128))  # 28 -> 14 -> 7 -> 3
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * 3 * 3, classes))

    def forward(self, x):  # x: (B, 1, 28, 28) in [0, 1]
        return self.head(self.features(x))


def weights_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("deltadit.weights") / "animals" / "classifier" / "model.safetensors"))


def load_classifier(path: Path | None = None) -> AnimalClassifier:
    from safetensors.torch import load_file

    from deltadit.errors import DeltaDiTError

    path = Path(path or weights_path())
    if not path.is_file():
        raise DeltaDiTError(f"classifier | {path} not found. Expected: python scripts/train_classifier.py")
    model = AnimalClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


@torch.no_grad()
def predict(model: AnimalClassifier, images) -> torch.Tensor:
    """images: (B, 28, 28) or (B, 1, 28, 28), float in [0, 1] or uint8 -> predicted labels (B,)."""
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        x = x.float() / 255
    if x.dim() == 3:
        x = x[:, None]
    return torch.cat([model(x[i:i + 512].float()).argmax(1) for i in range(0, len(x), 512)])
