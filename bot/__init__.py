"""hub-export-bot: validated ONNX and TorchScript exports of Hugging Face checkpoints, offered as one Hub PR."""

__version__ = "0.1.0"
