"""The zoo: small real architectures, randomly initialised from a config (nothing is downloaded), each with a
generator of inputs shaped as the model expects.

Transformers models are built from tiny `transformers` configs (the layer types of the real model, a few
channels and one or two blocks each), so each export takes seconds; a UNet and two keyword spotters (LSTM, GRU)
are defined here in torch. A Hugging Face model that one of `sdk.hf.TASKS` fits is exported with `task=`;
the others (a Whisper encoder takes `input_features`, Segformer and DETR return more than `logits`, GPT-2 is
called as a causal LM often is, with token ids and no mask) are wrapped by `NamedOutputs`, which is what a user
of such a model writes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers as tf
from torch import nn
from torch.nn import functional as F

IMAGE = 32
TEXT_LENGTH = 16
VOCAB = 64
MELS, FRAMES = 16, 32


@dataclass(frozen=True)
class ZooModel:
    """One architecture: its constructor, its inputs for a seed (the example is seed 0, calibration samples use
    the following seeds) and the `task=` it is exported with (None: plain example_inputs)."""

    name: str
    title: str
    factory: Callable[[], nn.Module]
    sample: Callable[[int], tuple[torch.Tensor, ...]]
    task: str | None = None

    def build(self) -> nn.Module:
        """The same random weights on every build, in eval mode, with BatchNorm as training leaves it.

        `transformers` initialises BatchNorm scales like weights (std 0.02), which shrinks activations ~50x per
        layer: MobileViT's and EfficientNet's logits come out exactly zero. The norms get torch's defaults back,
        then running statistics from a few samples (seeds no example or calibration sample uses), as a trained
        model has.
        """
        torch.manual_seed(0)
        model = self.factory().eval()
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for norm in norms:
            norm.reset_parameters()
            norm.momentum = None  # a cumulative average over the samples
            norm.train()
        if norms:
            with torch.no_grad():  # one batch: a 1x1 feature map of one sample has no variance
                model(*(torch.cat(parts) for parts in zip(*map(self.sample, range(1000, 1008)))))
        return model.eval()


class NamedOutputs(nn.Module):
    """A Hugging Face model whose input is not one `sdk.hf` task names, called with that one keyword input and
    returning the named outputs as a tuple (exporters take positional tensors in and tensors out)."""

    def __init__(self, model: nn.Module, input_name: str, outputs: tuple[str, ...]):
        super().__init__()
        self.model, self.input_name, self.outputs = model.eval(), input_name, outputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result = self.model(**{self.input_name: x}, return_dict=True)
        return tuple(result[name] for name in self.outputs)


class UNet(nn.Module):
    """Two-level UNet (conv blocks, max-pool down, transposed-conv up, skip concatenation): a segmentation net."""

    def __init__(self, channels: int = 8, classes: int = 3):
        super().__init__()
        self.down1, self.down2 = self._block(3, channels), self._block(channels, 2 * channels)
        self.bottom = self._block(2 * channels, 4 * channels)
        self.up2 = nn.ConvTranspose2d(4 * channels, 2 * channels, 2, stride=2)
        self.dec2 = self._block(4 * channels, 2 * channels)
        self.up1 = nn.ConvTranspose2d(2 * channels, channels, 2, stride=2)
        self.dec1 = self._block(2 * channels, channels)
        self.head = nn.Conv2d(channels, classes, 1)

    @staticmethod
    def _block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.down1(x)
        s2 = self.down2(F.max_pool2d(s1, 2))
        bottom = self.bottom(F.max_pool2d(s2, 2))
        d2 = self.dec2(torch.cat([self.up2(bottom), s2], dim=1))
        return self.head(self.dec1(torch.cat([self.up1(d2), s1], dim=1)))


class KeywordSpotter(nn.Module):
    """Recurrent keyword spotter: log-mel frames (batch, time, mels) -> a two-layer LSTM or GRU -> class logits
    from the last step."""

    def __init__(self, cell: type[nn.LSTM] | type[nn.GRU], mels: int = MELS, hidden: int = 32, classes: int = 12):
        super().__init__()
        self.rnn = cell(mels, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(frames)
        return self.head(out[:, -1])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(size: int = IMAGE) -> Callable[[int], tuple[torch.Tensor, ...]]:
    return lambda seed: (torch.randn(1, 3, size, size, generator=_gen(seed)),)


def _text(seed: int) -> tuple[torch.Tensor, ...]:
    """Token ids and a mask whose last few positions are padding (a varying real length, as batches have)."""
    g = _gen(seed)
    ids = torch.randint(0, VOCAB, (1, TEXT_LENGTH), generator=g)
    length = int(torch.randint(TEXT_LENGTH // 2, TEXT_LENGTH + 1, (1,), generator=g))
    return ids, (torch.arange(TEXT_LENGTH) < length).long().unsqueeze(0)


def _token_ids(seed: int) -> tuple[torch.Tensor, ...]:
    return _text(seed)[:1]


def _frames(seed: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(1, FRAMES, MELS, generator=_gen(seed)),)


def _mels(seed: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(1, MELS, FRAMES, generator=_gen(seed)),)


def _tokens() -> dict[str, int]:
    """Special token ids inside the tiny vocabulary (the configs' defaults index GPT-2's 50k tokens)."""
    return {"vocab_size": VOCAB, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def _whisper_encoder() -> nn.Module:
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = tf.WhisperConfig(num_mel_bins=MELS, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                              encoder_ffn_dim=64, max_source_positions=FRAMES // 2, decoder_start_token_id=1,
                              **_tokens())
    return NamedOutputs(WhisperEncoder(config), "input_features", ("last_hidden_state",))


def _detr() -> nn.Module:
    backbone = tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"])
    config = tf.DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
                           d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=8,
                           num_labels=5)
    return NamedOutputs(tf.DetrForObjectDetection(config), "pixel_values", ("logits", "pred_boxes"))


ZOO: dict[str, ZooModel] = {m.name: m for m in [
    ZooModel("vit", "ViT (patch 8, 2 blocks)", lambda: tf.ViTForImageClassification(tf.ViTConfig(
        image_size=IMAGE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10)), _image(), "image-classification"),
    ZooModel("swin", "Swin (window 4, 2 stages)", lambda: tf.SwinForImageClassification(tf.SwinConfig(
        image_size=IMAGE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
        num_labels=10)), _image(), "image-classification"),
    ZooModel("mobilevit", "MobileViT (64 px)", lambda: tf.MobileViTForImageClassification(
        tf.MobileViTConfig(image_size=64, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
                           num_attention_heads=2, num_labels=10)), _image(64), "image-classification"),
    ZooModel("convnext", "ConvNeXt (2 stages)", lambda: tf.ConvNextForImageClassification(
        tf.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10, image_size=IMAGE)),
        _image(), "image-classification"),
    ZooModel("resnet", "ResNet (2 stages)", lambda: tf.ResNetForImageClassification(tf.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10, image_size=IMAGE)),
        _image(), "image-classification"),
    ZooModel("efficientnet", "EfficientNet (width 0.25)", lambda: tf.EfficientNetForImageClassification(
        tf.EfficientNetConfig(image_size=IMAGE, width_coefficient=0.25, depth_coefficient=0.2,
                              hidden_dim=320, num_labels=10)),  # hidden_dim: the top conv's 1280 x width
        _image(), "image-classification"),
    ZooModel("distilbert", "DistilBERT (2 layers)", lambda: tf.DistilBertForSequenceClassification(
        tf.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=32, num_labels=3,
                            **_tokens())), _text, "text-classification"),
    ZooModel("gpt2", "GPT-2 LM (2 layers, no mask)", lambda: NamedOutputs(tf.GPT2LMHeadModel(tf.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, n_positions=32, use_cache=False, **_tokens())), "input_ids", ("logits",)),
        _token_ids),
    ZooModel("whisper-encoder", "Whisper encoder (2 layers)", _whisper_encoder, _mels),
    ZooModel("segformer", "Segformer (2 stages)", lambda: NamedOutputs(
        tf.SegformerForSemanticSegmentation(tf.SegformerConfig(
            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
            patch_sizes=[7, 3], strides=[4, 2], decoder_hidden_size=32, num_labels=4, image_size=IMAGE)),
        "pixel_values", ("logits",)), _image()),
    ZooModel("detr", "DETR (ResNet backbone, 8 queries)", _detr, _image(64)),
    ZooModel("unet", "UNet (2 levels)", UNet, _image()),
    ZooModel("lstm-kws", "LSTM keyword spotter", lambda: KeywordSpotter(nn.LSTM), _frames),
    ZooModel("gru-kws", "GRU keyword spotter", lambda: KeywordSpotter(nn.GRU), _frames),
]}
