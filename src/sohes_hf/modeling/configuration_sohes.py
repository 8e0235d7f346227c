"""Configuration of the SOHES segmentation model (paper section 3.2 and appendix A).

The model is DINO ViT-B/8 -> ViT-Adapter -> Mask2Former pixel decoder and masked-attention
transformer decoder -> class, mask and ancestor heads. One :class:`SohesConfig` holds every
size and loss weight; the Mask2Former blocks from transformers are driven by an internal
``Mask2FormerConfig`` derived from it (:meth:`SohesConfig.to_mask2former_config`).

This file imports nothing from ``sohes_hf`` so that it can be copied flat into a Hub repository
next to ``modeling_sohes.py`` and loaded with ``trust_remote_code=True``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import Mask2FormerConfig, PretrainedConfig, ViTConfig
from transformers.configuration_utils import SubConfigSpec

from .dino_vit import POSITION_INTERPOLATIONS

# DINO ViT-B/8 (facebook/dino-vitb8): ViT-B with 8x8 patches, DINO's own LayerNorm epsilon 1e-6
# (the Hub config says 1e-12; from_dino corrects it, see dino_vit.apply_dino_layer_norm_eps).
DINO_VITB8_BACKBONE_KWARGS: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "patch_size": 8,
    "image_size": 224,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
}


_INT_FIELDS = (
    "adapter_conv_inplane",
    "adapter_num_heads",
    "adapter_num_points",
    "adapter_norm_num_groups",
    "feature_size",
    "mask_feature_size",
    "hidden_dim",
    "encoder_feedforward_dim",
    "encoder_layers",
    "decoder_layers",
    "num_attention_heads",
    "dim_feedforward",
    "num_queries",
    "train_num_points",
)
_FLOAT_FIELDS = (
    "adapter_deform_ratio",
    "adapter_cffn_ratio",
    "adapter_init_values",
    "adapter_drop_path_rate",
    "dropout",
    "no_object_weight",
    "class_weight",
    "mask_weight",
    "dice_weight",
    "ancestor_loss_weight",
    "oversample_ratio",
    "importance_sample_ratio",
    "init_std",
    "init_xavier_std",
)
_BOOL_FIELDS = (
    "adapter_use_cffn",
    "adapter_add_vit_feature",
    "adapter_use_extra_extractor",
    "pre_norm",
    "enforce_input_projection",
    "use_auxiliary_loss",
)


class SohesConfig(PretrainedConfig):
    r"""Configuration of :class:`SohesForHierarchicalSegmentation`.

    Defaults reproduce the paper's model (section 3.2, appendix A): DINO ViT-B/8 backbone,
    ViT-Adapter, Mask2Former head and the ancestor prediction head. Values the paper does not
    state follow the ViT-Adapter and Mask2Former defaults for ViT-B; ``docs/model.md`` lists
    the source of each.

    Args:
        backbone_config (`ViTConfig` or `dict`, *optional*):
            The plain ViT backbone (transformers ``ViTModel``), ViT-B/8 like ``facebook/dino-vitb8``
            by default. Its tokens form a stride-``patch_size`` grid.
        backbone_position_interpolation (`str`, defaults to `"vit_adapter"`):
            How the ViT's position table (trained at 224 px) is resized to the input's patch grid:
            ``"vit_adapter"`` resizes bicubically to exactly that grid, as the official
            ViT-Adapter (``_get_pos_embed``) and transformers' ViT do; ``"dino"`` uses DINO's rule
            (bicubic, ``scale_factor = (g + 0.1) / 28``), which the self-exploration features use,
            so the fine-tuned ViT starts from exactly the function that made the pseudo-labels.
            ``docs/model.md`` explains the default.
        interaction_indexes (`list[list[int]]`, defaults to `[[0, 2], [3, 5], [6, 8], [9, 11]]`):
            ViT-Adapter interaction blocks: block ``k`` runs ViT layers ``start..end`` (inclusive)
            between an injector and an extractor. Groups must be contiguous, in order, and cover
            every backbone layer.
        adapter_conv_inplane (`int`, defaults to 64):
            Base channel width of the adapter's convolutional spatial prior module.
        adapter_num_heads (`int`, defaults to 12):
            Heads of the adapter's multi-scale deformable attention (``deform_num_heads``).
        adapter_num_points (`int`, defaults to 4):
            Sampling points per head and level of the adapter's deformable attention.
        adapter_deform_ratio (`float`, defaults to 0.5):
            Value-projection width of the deformable attention as a fraction of the ViT width.
        adapter_cffn_ratio (`float`, defaults to 0.25):
            Hidden width of the extractor's convolutional FFN as a fraction of the ViT width.
        adapter_use_cffn (`bool`, defaults to `True`):
            Whether extractors end with the convolutional FFN.
        adapter_add_vit_feature (`bool`, defaults to `True`):
            Whether the ViT token map after each of the four interaction stages (no final
            LayerNorm) is added to one output, bilinearly resized: stage 1 to stride 4, 2 to 8,
            3 to 16, 4 to 32 (official ViT-Adapter rule); needs four interaction groups.
        adapter_use_extra_extractor (`bool`, defaults to `True`):
            Whether the last interaction block has two extra extractors (ViT-Adapter default).
        adapter_init_values (`float`, defaults to 0.0):
            Initial value of the injector's learnable gate ``gamma``; 0 means the ViT starts out
            exactly as pre-trained.
        adapter_drop_path_rate (`float`, defaults to 0.0):
            Stochastic-depth rate on the extractor's convolutional FFN branch.
        adapter_norm_num_groups (`int`, defaults to 32):
            Groups of the GroupNorm layers of the adapter (ViT-Adapter uses SyncBatchNorm; with two
            images per GPU in the paper's setup, a batch-independent norm is the safer choice).
        feature_size (`int`, defaults to 256):
            Channels of the Mask2Former pixel decoder features (multiple of 32: GroupNorm(32)).
        mask_feature_size (`int`, defaults to 256):
            Channels of the per-pixel mask embeddings.
        hidden_dim (`int`, defaults to 256):
            Query feature dimension ``C`` of the transformer decoder and the ancestor head.
        encoder_feedforward_dim (`int`, defaults to 1024):
            FFN width of the pixel decoder's deformable encoder.
        encoder_layers (`int`, defaults to 6):
            Deformable encoder layers in the pixel decoder.
        decoder_layers (`int`, defaults to 10):
            Mask2Former ``decoder_layers``: the decoder has ``decoder_layers - 1`` masked-attention
            layers and predicts ``decoder_layers`` times (also from the initial queries).
        num_attention_heads (`int`, defaults to 8):
            Attention heads in the pixel decoder and transformer decoder.
        dim_feedforward (`int`, defaults to 2048):
            FFN width of the transformer decoder.
        dropout (`float`, defaults to 0.0):
            Dropout in the pixel decoder and the transformer decoder.
        pre_norm (`bool`, defaults to `False`):
            Pre-LayerNorm transformer decoder layers (Mask2Former uses post-norm).
        enforce_input_projection (`bool`, defaults to `False`):
            Always project pixel decoder features into the decoder, even when widths match.
        num_queries (`int`, defaults to 1000):
            Entity queries ``N``. The paper does not state it; it evaluates AR at up to 1,000
            predictions per image (section 4), so 1,000 queries let the model produce that many.
        no_object_weight (`float`, defaults to 0.1):
            Cross-entropy weight of the no-object class.
        class_weight (`float`, defaults to 2.0):
            Weight of the classification loss and matching cost.
        mask_weight (`float`, defaults to 5.0):
            Weight of the binary cross-entropy mask loss and matching cost.
        dice_weight (`float`, defaults to 5.0):
            Weight of the dice loss and matching cost.
        ancestor_loss_weight (`float`, defaults to 1.0):
            Weight of the ancestor BCE loss (equation 1); 0 trains a plain Mask2Former. The paper
            does not give a weight.
        train_num_points (`int`, defaults to 12544):
            Points sampled per mask for the mask losses and matching costs (112 x 112).
        oversample_ratio (`float`, defaults to 3.0):
            Oversampling factor of the uncertainty-based point sampling.
        importance_sample_ratio (`float`, defaults to 0.75):
            Fraction of sampled points chosen by uncertainty.
        use_auxiliary_loss (`bool`, defaults to `True`):
            Supervise every decoder layer's predictions (losses suffixed ``_0`` ... ``_{L-2}``).
        init_std (`float`, defaults to 0.02):
            Standard deviation of the normal initialisation of linear and convolution layers.
        init_xavier_std (`float`, defaults to 1.0):
            Gain of the Xavier initialisation of the transformer decoder layers.
    """

    model_type = "sohes"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "backbone_config": SubConfigSpec(config_class=ViTConfig, init_kwargs=DINO_VITB8_BACKBONE_KWARGS),
    }

    backbone_config: dict | PretrainedConfig | None = None
    backbone_position_interpolation: str = "vit_adapter"
    interaction_indexes: list[list[int]] | None = None
    adapter_conv_inplane: int = 64
    adapter_num_heads: int = 12
    adapter_num_points: int = 4
    adapter_deform_ratio: float = 0.5
    adapter_cffn_ratio: float = 0.25
    adapter_use_cffn: bool = True
    adapter_add_vit_feature: bool = True
    adapter_use_extra_extractor: bool = True
    adapter_init_values: float = 0.0
    adapter_drop_path_rate: float = 0.0
    adapter_norm_num_groups: int = 32
    feature_size: int = 256
    mask_feature_size: int = 256
    hidden_dim: int = 256
    encoder_feedforward_dim: int = 1024
    encoder_layers: int = 6
    decoder_layers: int = 10
    num_attention_heads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.0
    pre_norm: bool = False
    enforce_input_projection: bool = False
    num_queries: int = 1000
    no_object_weight: float = 0.1
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    ancestor_loss_weight: float = 1.0
    train_num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    use_auxiliary_loss: bool = True
    init_std: float = 0.02
    init_xavier_std: float = 1.0

    def __post_init__(self, **kwargs: Any) -> None:
        if self.interaction_indexes is None:
            self.interaction_indexes = [[0, 2], [3, 5], [6, 8], [9, 11]]
        if not isinstance(self.interaction_indexes, (list, tuple)) or not all(
            isinstance(group, (list, tuple)) for group in self.interaction_indexes
        ):
            raise ValueError(
                f"interaction_indexes must be a list of [start, end] pairs, got {self.interaction_indexes!r}"
            )
        # JSON turns tuples into lists; normalise so equality and validation see lists.
        self.interaction_indexes = [list(group) for group in self.interaction_indexes]
        if isinstance(self.backbone_config, dict):
            # A bare dict (e.g. written by hand) gets the ViT-B/8 defaults for the keys it omits.
            self.backbone_config = {**DINO_VITB8_BACKBONE_KWARGS, "model_type": "vit", **self.backbone_config}
        super().__post_init__(**kwargs)
        self._validate_types()
        self._validate_fields()

    def _validate_types(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            setattr(self, name, float(value))
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def _validate_fields(self) -> None:
        """Checks value ranges and cross-field consistency; raises ValueError naming the field."""
        backbone = self.backbone_config
        if not isinstance(backbone, ViTConfig):
            raise ValueError(f"backbone_config must be a ViTConfig, got {type(backbone).__name__}")
        if self.backbone_position_interpolation not in POSITION_INTERPOLATIONS:
            raise ValueError(
                f"backbone_position_interpolation must be one of {', '.join(POSITION_INTERPOLATIONS)}, "
                f"got {self.backbone_position_interpolation!r}"
            )
        for name in _INT_FIELDS:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("adapter_deform_ratio", "adapter_cffn_ratio", "oversample_ratio"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in (
            "no_object_weight",
            "class_weight",
            "mask_weight",
            "dice_weight",
            "ancestor_loss_weight",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.class_weight == 0 and self.mask_weight == 0 and self.dice_weight == 0:
            raise ValueError("class_weight, mask_weight and dice_weight cannot all be 0 (Hungarian matching)")
        for name in ("adapter_drop_path_rate", "dropout", "importance_sample_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.init_std <= 0 or self.init_xavier_std <= 0:
            raise ValueError(
                f"init_std and init_xavier_std must be positive, got {self.init_std}, {self.init_xavier_std}"
            )
        self._validate_interaction_indexes(backbone.num_hidden_layers)
        self._validate_widths(backbone)

    def _validate_interaction_indexes(self, num_layers: int) -> None:
        groups = self.interaction_indexes or []
        if not groups:
            raise ValueError("interaction_indexes must hold at least one [start, end] group")
        expected_start = 0
        for group in groups:
            if len(group) != 2 or group[0] != expected_start or group[1] < group[0]:
                raise ValueError(
                    "interaction_indexes must be contiguous [start, end] groups starting at layer 0, "
                    f"got {groups}"
                )
            expected_start = group[1] + 1
        if expected_start != num_layers:
            raise ValueError(f"interaction_indexes must cover all {num_layers} backbone layers, got {groups}")

    def _validate_widths(self, backbone: ViTConfig) -> None:
        width = backbone.hidden_size
        if width % self.adapter_num_heads:
            raise ValueError(
                f"adapter_num_heads={self.adapter_num_heads} must divide backbone_config.hidden_size={width}"
            )
        value_width = int(width * self.adapter_deform_ratio)
        if value_width % self.adapter_num_heads or value_width == 0:
            raise ValueError(
                f"adapter_deform_ratio={self.adapter_deform_ratio} gives a value width {value_width} not "
                f"divisible by adapter_num_heads={self.adapter_num_heads}"
            )
        if int(width * self.adapter_cffn_ratio) < 1:
            raise ValueError(f"adapter_cffn_ratio={self.adapter_cffn_ratio} leaves no hidden channels")
        for name, channels in (("adapter_conv_inplane", self.adapter_conv_inplane), ("hidden_size", width)):
            if channels % self.adapter_norm_num_groups:
                raise ValueError(
                    f"adapter_norm_num_groups={self.adapter_norm_num_groups} must divide {name}={channels}"
                )
        if self.feature_size % 32:
            raise ValueError(
                f"feature_size must be a multiple of 32 (GroupNorm(32)), got {self.feature_size}"
            )
        if self.mask_feature_size != self.hidden_dim:
            raise ValueError(
                f"mask_feature_size={self.mask_feature_size} must equal hidden_dim={self.hidden_dim} "
                "(mask logits are query embeddings dotted with mask features)"
            )
        for name in ("feature_size", "hidden_dim"):
            if getattr(self, name) % self.num_attention_heads:
                raise ValueError(
                    f"num_attention_heads={self.num_attention_heads} must divide {name}={getattr(self, name)}"
                )
        if backbone.patch_size not in (8, 16):
            raise ValueError(f"backbone_config.patch_size must be 8 or 16, got {backbone.patch_size}")

    def to_mask2former_config(self) -> Mask2FormerConfig:
        """Builds the ``Mask2FormerConfig`` that drives transformers' pixel decoder, decoder and loss.

        One label (entity) plus transformers' implicit no-object class. The backbone config is a
        placeholder Swin config that is never instantiated: passing it explicitly keeps
        ``Mask2FormerConfig`` from resolving a default backbone (which may contact the Hub).
        """
        return Mask2FormerConfig(  # type: ignore[call-arg]  # num_labels is a PretrainedConfig kwarg
            backbone_config={"model_type": "swin", "out_features": ["stage1", "stage2", "stage3", "stage4"]},
            num_labels=1,
            feature_size=self.feature_size,
            mask_feature_size=self.mask_feature_size,
            hidden_dim=self.hidden_dim,
            encoder_feedforward_dim=self.encoder_feedforward_dim,
            encoder_layers=self.encoder_layers,
            decoder_layers=self.decoder_layers,
            num_attention_heads=self.num_attention_heads,
            dropout=self.dropout,
            dim_feedforward=self.dim_feedforward,
            pre_norm=self.pre_norm,
            enforce_input_projection=self.enforce_input_projection,
            common_stride=4,
            num_queries=self.num_queries,
            no_object_weight=self.no_object_weight,
            class_weight=self.class_weight,
            mask_weight=self.mask_weight,
            dice_weight=self.dice_weight,
            train_num_points=self.train_num_points,
            oversample_ratio=self.oversample_ratio,
            importance_sample_ratio=self.importance_sample_ratio,
            init_std=self.init_std,
            init_xavier_std=self.init_xavier_std,
            use_auxiliary_loss=self.use_auxiliary_loss,
            feature_strides=[4, 8, 16, 32],
        )


__all__ = ["SohesConfig"]
