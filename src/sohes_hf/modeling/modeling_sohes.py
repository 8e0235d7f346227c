"""SOHES segmentation model: DINO ViT + ViT-Adapter + Mask2Former + ancestor head (paper section 3.2).

::

    pixel_values (B,3,H,W)
        |
    SohesViTAdapter (DINO ViT-B/8 layers interleaved with injector/extractor blocks)
        |  four maps (B,768,H/s,W/s), s = 4, 8, 16, 32
    Mask2FormerPixelDecoder (transformers; deformable encoder on strides 8/16/32 + FPN to 4)
        |  mask_features (B,256,H/4,W/4), multi-scale features (strides 32, 16, 8)
    Mask2FormerTransformerModule (transformers; masked-attention decoder, N queries)
        |  per layer: query features Q (B,N,C), mask logits (B,N,H/4,W/4)
        +-- class_predictor: Linear(C, 2) -> entity / no-object logits
        +-- SohesAncestorHead: (Q W1)(Q W2)^T / sqrt(C) -> ancestor logits (B,N,N)

Losses are transformers' ``Mask2FormerLoss`` pieces (class CE, mask BCE, dice on sampled points)
with one Hungarian matching per decoder layer, plus the ancestor BCE on the same matching.
This file imports nothing from ``sohes_hf`` (only sibling modules, relatively) so that
``save_pretrained`` can copy it flat into a Hub repository for ``trust_remote_code=True``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, ViTModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerLoss,
    Mask2FormerMaskedAttentionDecoderLayer,
    Mask2FormerPixelDecoder,
    Mask2FormerPixelDecoderEncoderLayer,
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    Mask2FormerPredictionBlock,
    Mask2FormerTransformerModule,
)
from transformers.utils import ModelOutput

from .adapter_blocks import Injector, MultiScaleDeformableAttention, deformable_offset_grid
from .ancestor_head import SohesAncestorHead, ancestor_loss
from .configuration_sohes import SohesConfig
from .dino_vit import apply_dino_layer_norm_eps
from .vit_adapter import SohesViTAdapter

# Same logger tree as sohes_hf.logging_utils.get_logger(__name__) (which is logging.getLogger);
# called directly so that this file stays importable on its own as Hub remote code.
logger = logging.getLogger(__name__)


@dataclass
class SohesModelOutput(ModelOutput):
    """Output of :class:`SohesForHierarchicalSegmentation`.

    ``N`` is ``config.num_queries``, ``C`` is ``config.hidden_dim``, ``L`` is
    ``config.decoder_layers`` (the number of predictions: initial queries plus each decoder layer).

    Args:
        loss: Scalar total loss (sum of ``loss_dict``), present when labels are given.
        loss_dict: Weighted loss terms: ``loss_cross_entropy``, ``loss_mask``, ``loss_dice``,
            ``loss_ancestor`` (when ``ancestor_loss_weight > 0``) for the last layer, and the
            same names suffixed ``_0`` ... ``_{L-2}`` for the earlier layers.
        class_queries_logits: ``(B, N, 2)``; index 0 = entity, 1 = no-object.
        masks_queries_logits: ``(B, N, H/4, W/4)`` mask logits.
        ancestor_logits: ``(B, N, N)`` pre-sigmoid; ``[b, i, j]`` scores "mask i is an ancestor
            of mask j" (equation 1).
        query_features: ``(B, N, C)`` last decoder layer's query features (after LayerNorm).
        auxiliary_class_queries_logits: ``L - 1`` tensors ``(B, N, 2)`` of the earlier layers.
        auxiliary_masks_queries_logits: ``L - 1`` tensors ``(B, N, H/4, W/4)``.
        auxiliary_ancestor_logits: ``L - 1`` tensors ``(B, N, N)``.
        mask_features: ``(B, mask_feature_size, H/4, W/4)`` per-pixel embeddings of the pixel decoder.
    """

    loss: torch.Tensor | None = None
    loss_dict: dict[str, torch.Tensor] | None = None
    class_queries_logits: torch.Tensor | None = None
    masks_queries_logits: torch.Tensor | None = None
    ancestor_logits: torch.Tensor | None = None
    query_features: torch.Tensor | None = None
    auxiliary_class_queries_logits: tuple[torch.Tensor, ...] | None = None
    auxiliary_masks_queries_logits: tuple[torch.Tensor, ...] | None = None
    auxiliary_ancestor_logits: tuple[torch.Tensor, ...] | None = None
    mask_features: torch.Tensor | None = None


class SohesPreTrainedModel(PreTrainedModel):
    """Weight initialisation and Hub plumbing shared by SOHES models.

    transformers treats a model defined outside its own package as custom code and, for such
    models, skips ``_init_weights`` on modules that own no parameters directly (it assumes the
    custom code wrote parameters itself). That would skip the deformable attentions'
    sampling-offset grid, the decoder layers' Xavier init and the pixel decoder's
    ``level_embed`` (allocated uninitialised). Every branch of :meth:`_init_weights` below uses
    ``transformers.initialization`` functions, which leave loaded weights alone, so the shortcut
    is not needed and :meth:`_initialize_weights` turns it off.
    """

    config_class = SohesConfig
    config: SohesConfig
    base_model_prefix = "sohes"
    main_input_name = "pixel_values"
    input_modalities = "image"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = [  # noqa: RUF012 - type fixed by PreTrainedModel
        "ViTLayer",
        "Mask2FormerMaskedAttentionDecoderLayer",
    ]

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        super()._initialize_weights(module, is_custom_code=False)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:  # noqa: C901 - one branch per module kind
        config = self.config
        if isinstance(
            module,
            (MultiScaleDeformableAttention, Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention),
        ):
            _init_deformable_attention(module)
        elif isinstance(module, Injector):
            init.constant_(module.gamma, module.init_values)
        elif isinstance(module, (SohesViTAdapter, Mask2FormerPixelDecoder)):
            init.normal_(module.level_embed, mean=0.0, std=1.0)
            if isinstance(module, Mask2FormerPixelDecoder):
                # Children are initialised first, so this overrides the generic N(0, init_std).
                _init_mask_projection(module.mask_projection)
        elif isinstance(module, Mask2FormerTransformerModule):
            for projection in module.input_projections:
                if isinstance(projection, nn.Conv2d):
                    init.xavier_uniform_(projection.weight, gain=config.init_xavier_std)
                    if projection.bias is not None:
                        init.zeros_(projection.bias)
        elif isinstance(module, Mask2FormerMaskedAttentionDecoderLayer):
            for parameter in module.parameters():
                if parameter.dim() > 1:
                    init.xavier_uniform_(parameter, gain=config.init_xavier_std)
            if module.cross_attn.in_proj_bias is not None:
                init.zeros_(module.cross_attn.in_proj_bias)
        elif isinstance(module, Mask2FormerPredictionBlock):
            # Mask2Former keeps PyTorch's default nn.Linear init for the mask MLP.
            for linear in module.modules():
                if isinstance(linear, nn.Linear):
                    _init_linear_default(linear)
        elif isinstance(module, nn.Embedding):
            # Query and level embeddings: N(0, 1) like PyTorch's default, as in Mask2Former.
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, Mask2FormerLoss):
            empty_weight = torch.ones(module.empty_weight.shape[0])
            empty_weight[-1] = module.eos_coef
            init.copy_(module.empty_weight, empty_weight)
        else:
            super()._init_weights(module)


def _init_deformable_attention(
    module: MultiScaleDeformableAttention | Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
) -> None:
    """Deformable DETR init: zero offset weights, ring-shaped offset bias, uniform attention."""
    if isinstance(module, MultiScaleDeformableAttention):
        grid = module.sampling_offset_grid()
    else:
        grid = deformable_offset_grid(module.n_heads, module.n_levels, module.n_points)
    init.zeros_(module.sampling_offsets.weight)
    init.copy_(module.sampling_offsets.bias, grid)
    init.zeros_(module.attention_weights.weight)
    init.zeros_(module.attention_weights.bias)
    init.xavier_uniform_(module.value_proj.weight)
    init.zeros_(module.value_proj.bias)
    init.xavier_uniform_(module.output_proj.weight)
    init.zeros_(module.output_proj.bias)


def _init_mask_projection(conv: nn.Conv2d) -> None:
    """Mask2Former's init of the per-pixel embedding conv: detectron2's ``c2_xavier_fill``.

    Kaiming-uniform with ``a = 1`` (weight std ``1 / sqrt(fan_in)``), zero bias. Nothing normalises
    this conv's output, and the mask logits are ``query_embedding . mask_features``, so its scale
    is the logits' scale. transformers' port leaves it to the generic ``N(0, init_std = 0.02)``,
    which makes the mask features 1/sqrt(fan_in) / 0.02 times smaller (9x for a 32-channel
    decoder, 3x for the 256-channel one): every initial mask logit is then ~0, the product of
    two near-zero factors has near-zero gradients, and a from-scratch model sits on an
    all-empty-mask plateau for hundreds of steps (docs/training.md, "Empty masks").
    """
    init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        init.zeros_(conv.bias)


def _init_linear_default(linear: nn.Linear) -> None:
    """PyTorch's default nn.Linear init (Kaiming uniform with a=sqrt(5), uniform bias)."""
    init.kaiming_uniform_(linear.weight, a=5**0.5)
    if linear.bias is not None:
        bound = 1.0 / linear.weight.shape[1] ** 0.5
        init.uniform_(linear.bias, -bound, bound)


class _CheckpointablePixelDecoderEncoderLayer(
    GradientCheckpointingLayer, Mask2FormerPixelDecoderEncoderLayer
):
    """transformers' pixel-decoder encoder layer, recomputed under ``activation_checkpointing_enable()``.

    transformers' layer is a plain ``nn.Module``; its instances get this class (same weights and
    state-dict keys, same forward) so that deformable self-attention over the stride-8/16/32
    tokens, the largest activation after the ViT's, is checkpointed with the rest.
    """


class SohesForHierarchicalSegmentation(SohesPreTrainedModel):
    """SOHES hierarchical entity segmentation model (paper section 3.2, Figure 4).

    Predicts ``N`` entity masks with entity/no-object scores and an ``N x N`` matrix of
    ancestor relations between them. See :class:`SohesModelOutput` for shapes.
    """

    def __init__(self, config: SohesConfig) -> None:
        super().__init__(config)
        mask2former_config = config.to_mask2former_config()
        self.backbone = SohesViTAdapter(config)
        self.pixel_decoder = Mask2FormerPixelDecoder(
            mask2former_config, feature_channels=self.backbone.channels
        )
        for layer in self.pixel_decoder.encoder.layers:
            layer.__class__ = _CheckpointablePixelDecoderEncoderLayer
        self.transformer_module = Mask2FormerTransformerModule(
            in_features=config.feature_size, config=mask2former_config
        )
        self.class_predictor = nn.Linear(config.hidden_dim, 2)
        self.ancestor_head = SohesAncestorHead(config.hidden_dim)
        self.weight_dict: dict[str, float] = {
            "loss_cross_entropy": config.class_weight,
            "loss_mask": config.mask_weight,
            "loss_dice": config.dice_weight,
            "loss_ancestor": config.ancestor_loss_weight,
        }
        self.criterion = Mask2FormerLoss(config=mask2former_config, weight_dict=self.weight_dict)
        self.post_init()

    @classmethod
    def from_dino(
        cls,
        backbone_id_or_path: str | os.PathLike[str],
        config: SohesConfig | None = None,
        **kwargs: Any,
    ) -> SohesForHierarchicalSegmentation:
        """A new model whose ViT is initialised from a DINO ``ViTModel`` checkpoint.

        Everything else (adapter, Mask2Former, heads) is freshly initialised: this is the
        starting point of the self-instruction phase (section 3.2, appendix A). A DINO
        checkpoint whose config kept transformers' ``layer_norm_eps`` 1e-12 (the Hub's
        ``facebook/dino-vit*``) gets DINO's own 1e-6, logged at INFO, so the Hub id and a
        converted original ``.pth`` start from the same network.

        Args:
            backbone_id_or_path: A transformers ``ViTModel`` directory or Hub id, e.g.
                ``facebook/dino-vitb8`` (convert an original DINO ``.pth`` first with
                ``sohes convert``).
            config: Model config; its ``backbone_config`` is replaced by the checkpoint's. Defaults
                to ``SohesConfig()``.
            **kwargs: Passed to ``ViTModel.from_pretrained`` (e.g. ``revision``, ``local_files_only``).

        Raises:
            ValueError: the checkpoint's layer count does not match ``config.interaction_indexes``.
            OSError: a Hub id that is not cached, with no network.
        """
        # No sohes_hf import here: this file must also run as flat remote code. Callers that want
        # "Hub unreachable" as one line wrap this call in ``sohes_hf.hub.load_from_hub_or_folder``.
        vit = ViTModel.from_pretrained(str(backbone_id_or_path), add_pooling_layer=False, **kwargs)
        apply_dino_layer_norm_eps(vit, str(backbone_id_or_path))
        config = SohesConfig() if config is None else config
        config_dict = config.to_dict()
        config_dict["backbone_config"] = vit.config.to_dict()
        try:
            new_config = SohesConfig.from_dict(config_dict)
        except ValueError as error:
            raise ValueError(
                f"backbone_id_or_path={str(backbone_id_or_path)!r} does not fit config: {error}"
            ) from error
        model = cls(new_config)
        missing, unexpected = model.backbone.vit.load_state_dict(vit.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"backbone_id_or_path={str(backbone_id_or_path)!r}: ViT weights do not match "
                f"(missing {missing}, unexpected {unexpected})"
            )
        logger.info("initialised the ViT backbone from %s", backbone_id_or_path)
        return model

    def save_pretrained(self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        """Saves like transformers and makes the directory a self-contained remote-code repository.

        Besides weights and ``config.json`` (whose ``auto_map`` names the copied
        ``configuration_sohes.py``/``modeling_sohes.py``), this records the
        ``"hierarchical-segmentation"`` pipeline in ``config.custom_pipelines`` and copies its file
        ``pipeline_sohes.py`` (with the same-folder modules it imports). Together with the image
        processor saved to the same directory (``SohesImageProcessor.save_pretrained``, which
        copies ``image_processing_sohes.py`` and writes its own ``auto_map``), the directory or
        its Hub upload then works without sohes-hf::

            pipeline("hierarchical-segmentation", model=directory, trust_remote_code=True)

        transformers writes ``custom_pipelines`` only from ``Pipeline.save_pretrained``; doing it
        here covers what training and :meth:`push_to_hub` write. With sohes-hf installed, its
        registered pipeline serves the task and the entry is not consulted.
        All arguments go to ``PreTrainedModel.save_pretrained``.
        """
        # Relative import: also makes transformers copy pipeline_sohes.py with this file.
        from .pipeline_sohes import custom_pipeline_entry

        # vars(): the installed package may hide the attribute from transformers.pipeline.
        existing = vars(self.config).get("custom_pipelines") or {}
        self.config.custom_pipelines = {**existing, **custom_pipeline_entry()}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def push_to_hub(  # type: ignore[override]
        self,
        repo_id: str,
        *,
        training_record: dict[str, Any] | None = None,
        evaluation: dict[str, dict[str, Any]] | None = None,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        max_shard_size: int | str = "50GB",
        create_pr: bool = False,
        revision: str | None = None,
        commit_description: str | None = None,
    ) -> Any:
        """Uploads the model with a SOHES model card instead of transformers' generic one.

        The card (``sohes_hf.model_card``) describes the architecture from the config, the
        training recipe and data from ``training_record`` (default: the ``training_record.json``
        of the directory the model was loaded from, if any), the evaluation table from
        ``evaluation`` (``{dataset: {"AP", "AR_S", "AR_M", "AR_L", "AR"}}`` in percent), the
        limitations of paper appendix E, license and citation. The upload is what
        :meth:`save_pretrained` writes, so it includes the remote-code files and the
        ``custom_pipelines`` entry; push the image processor to the same ``repo_id``
        (``processor.push_to_hub(repo_id)``) for ``pipeline("hierarchical-segmentation",
        model=repo_id, trust_remote_code=True)`` to work without sohes-hf.
        """
        import json
        import tempfile

        from transformers.utils.hub import hf_api

        try:  # inside try: transformers' remote-code import check then does not require the package
            from sohes_hf.model_card import save_model_card
        except ImportError as error:
            raise ImportError("push_to_hub writes the SOHES model card: pip install sohes-hf") from error

        if training_record is None:
            record_path = os.path.join(str(self.config._name_or_path or ""), "training_record.json")
            if os.path.isfile(record_path):
                with open(record_path, encoding="utf-8") as handle:
                    training_record = json.load(handle)
        repo_id = hf_api().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as work_dir:
            self.save_pretrained(work_dir, max_shard_size=max_shard_size)
            if training_record is not None:
                with open(os.path.join(work_dir, "training_record.json"), "w", encoding="utf-8") as handle:
                    json.dump(training_record, handle, indent=2)
            save_model_card(work_dir, self.config, training_record, evaluation, model_id=repo_id)
            return self._upload_modified_files(
                work_dir,
                repo_id,
                files_timestamps={},
                commit_message=commit_message,
                token=token,
                create_pr=create_pr,
                revision=revision,
                commit_description=commit_description,
            )

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        mask_labels: list[torch.Tensor] | None = None,
        class_labels: list[torch.Tensor] | None = None,
        ancestor_labels: list[torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> SohesModelOutput:
        """Predicts masks, entity scores and ancestor relations; computes the loss given labels.

        Args:
            pixel_values: ``(B, 3, H, W)`` normalised images, ``H`` and ``W`` multiples of 32.
            pixel_mask: optional ``(B, H, W)``, 1 on real pixels and 0 on padding. Checked for
                shape only: like transformers' Mask2Former, padding is processed as image content.
            mask_labels: per image ``(M_i, H, W)`` float target masks (any resolution with the
                image's aspect; points are sampled in normalised coordinates).
            class_labels: per image ``(M_i,)`` long, all 0 (the single class "entity").
            ancestor_labels: per image ``(M_i, M_i)`` float, ``[i, j] = 1`` when target ``i`` is an
                ancestor of target ``j``. Required when ``config.ancestor_loss_weight > 0``.

        Returns:
            :class:`SohesModelOutput`; ``loss`` and ``loss_dict`` only when labels are given.
        """
        if kwargs:
            raise TypeError(f"forward() got unexpected arguments: {sorted(kwargs)}")
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be (B, 3, H, W), got shape {tuple(pixel_values.shape)}")
        batch_size, _, height, width = pixel_values.shape
        if pixel_mask is not None and tuple(pixel_mask.shape) != (batch_size, height, width):
            raise ValueError(
                f"pixel_mask must have shape {(batch_size, height, width)}, got {tuple(pixel_mask.shape)}"
            )

        use_labels = mask_labels is not None or class_labels is not None
        if use_labels:  # checked before the (costly) forward pass
            mask_labels, class_labels, ancestor_labels = _check_labels(
                mask_labels, class_labels, ancestor_labels, batch_size, self.config.ancestor_loss_weight > 0
            )

        features = self.backbone(pixel_values)
        decoder_output = self.pixel_decoder(
            list(features), output_hidden_states=False, output_attentions=False
        )
        transformer_output = self.transformer_module(
            multi_scale_features=decoder_output.multi_scale_features,
            mask_features=decoder_output.mask_features,
            output_hidden_states=True,
        )
        query_features = [states.transpose(0, 1) for states in transformer_output.intermediate_hidden_states]
        class_logits = [self.class_predictor(features) for features in query_features]
        ancestor_logits = [self.ancestor_head(features) for features in query_features]
        mask_logits = list(transformer_output.masks_queries_logits)

        loss, loss_dict = None, None
        if use_labels:
            loss_dict = self.compute_loss_dict(
                mask_logits,
                class_logits,
                ancestor_logits,
                mask_labels,
                class_labels,
                ancestor_labels,
                batch_size,
            )
            loss = torch.stack(list(loss_dict.values())).sum()

        return SohesModelOutput(
            loss=loss,
            loss_dict=loss_dict,
            class_queries_logits=class_logits[-1],
            masks_queries_logits=mask_logits[-1],
            ancestor_logits=ancestor_logits[-1],
            query_features=query_features[-1],
            auxiliary_class_queries_logits=tuple(class_logits[:-1]),
            auxiliary_masks_queries_logits=tuple(mask_logits[:-1]),
            auxiliary_ancestor_logits=tuple(ancestor_logits[:-1]),
            mask_features=decoder_output.mask_features,
        )

    def compute_loss_dict(
        self,
        mask_logits: list[torch.Tensor],
        class_logits: list[torch.Tensor],
        ancestor_logits: list[torch.Tensor],
        mask_labels: list[torch.Tensor] | None,
        class_labels: list[torch.Tensor] | None,
        ancestor_labels: list[torch.Tensor] | None,
        batch_size: int,
    ) -> dict[str, torch.Tensor]:
        """Weighted losses of every decoder layer (section 3.2; Mask2Former's losses + ancestor BCE).

        Each layer is matched once with the Hungarian matcher of transformers' ``Mask2FormerLoss``
        and that matching feeds the class, mask, dice and ancestor losses. Layers are visited in
        ``Mask2FormerLoss.forward``'s order (last layer first, then the earlier ones) so the
        random point sampling consumes the generator exactly as ``Mask2FormerLoss`` would: with
        ``ancestor_loss_weight = 0`` the result equals transformers' Mask2Former loss.

        Args:
            mask_logits, class_logits, ancestor_logits: per-layer predictions, last layer last.
            mask_labels, class_labels, ancestor_labels: see :meth:`forward`.
            batch_size: ``B``, to check the label lists.

        Returns:
            Loss name -> weighted scalar (names as in :class:`SohesModelOutput`).
        """
        use_ancestor = self.config.ancestor_loss_weight > 0
        mask_labels, class_labels, ancestor_labels = _check_labels(
            mask_labels, class_labels, ancestor_labels, batch_size, use_ancestor
        )
        layers = [(len(mask_logits) - 1, "")]
        if self.config.use_auxiliary_loss:
            layers += [(index, f"_{index}") for index in range(len(mask_logits) - 1)]
        criterion = self.criterion
        device = mask_logits[-1].device
        loss_dict: dict[str, torch.Tensor] = {}
        for layer, suffix in layers:
            indices = criterion.matcher(mask_logits[layer], class_logits[layer], mask_labels, class_labels)
            num_masks = num_masks_normaliser(class_labels, device=device)
            terms = {
                **criterion.loss_masks(mask_logits[layer], mask_labels, indices, num_masks),  # type: ignore[arg-type]
                **criterion.loss_labels(class_logits[layer], class_labels, indices),
            }
            if use_ancestor and ancestor_labels is not None:
                terms["loss_ancestor"] = ancestor_loss(ancestor_logits[layer], ancestor_labels, indices)
            for name, value in terms.items():
                loss_dict[f"{name}{suffix}"] = value * self.weight_dict[name]
        return loss_dict


def num_masks_normaliser(class_labels: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Mask/dice normaliser as Mask2Former's original code: all processes' target masks / world size, >= 1.

    transformers' ``Mask2FormerLoss.get_num_masks`` (5.24) averages with accelerate's ``reduce``
    and then divides by the world size again, making mask and dice losses N times too large
    under N processes; this sums with ``all_reduce`` instead.
    """
    num_masks = torch.as_tensor(float(sum(len(classes) for classes in class_labels)), device=device)
    world_size = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(num_masks, op=torch.distributed.ReduceOp.SUM)
        world_size = torch.distributed.get_world_size()
    return torch.clamp(num_masks / world_size, min=1)


def _check_labels(
    mask_labels: list[torch.Tensor] | None,
    class_labels: list[torch.Tensor] | None,
    ancestor_labels: list[torch.Tensor] | None,
    batch_size: int,
    use_ancestor: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor] | None]:
    """Validates the per-image label lists; raises ValueError naming the argument at fault."""
    if mask_labels is None or class_labels is None:
        raise ValueError("mask_labels and class_labels must be given together")
    if use_ancestor and ancestor_labels is None:
        raise ValueError("ancestor_labels is required when config.ancestor_loss_weight > 0")
    named = {"mask_labels": mask_labels, "class_labels": class_labels}
    if ancestor_labels is not None:
        named["ancestor_labels"] = ancestor_labels
    for name, labels in named.items():
        if not isinstance(labels, (list, tuple)) or len(labels) != batch_size:
            raise ValueError(f"{name} must be a list of {batch_size} tensors (one per image)")
    for index, (masks, classes) in enumerate(zip(mask_labels, class_labels, strict=True)):
        if masks.dim() != 3:
            raise ValueError(f"mask_labels[{index}] must be (M, H, W), got shape {tuple(masks.shape)}")
        if tuple(classes.shape) != (masks.shape[0],):
            raise ValueError(
                f"class_labels[{index}] must have shape ({masks.shape[0]},), got {tuple(classes.shape)}"
            )
        if classes.numel() and (classes.min() < 0 or classes.max() > 0):
            raise ValueError(
                f"class_labels[{index}] must be 0 (entity), got values {classes.unique().tolist()}"
            )
        if ancestor_labels is not None:
            expected = (masks.shape[0], masks.shape[0])
            if tuple(ancestor_labels[index].shape) != expected:
                raise ValueError(
                    f"ancestor_labels[{index}] must have shape {expected}, "
                    f"got {tuple(ancestor_labels[index].shape)}"
                )
    return (
        list(mask_labels),
        [c.long() for c in class_labels],
        list(ancestor_labels) if ancestor_labels else None,
    )


def register_auto_classes() -> None:
    """Registers ``SohesConfig`` and the model with ``AutoConfig``/``AutoModel`` (idempotent).

    Also marks the classes for ``save_pretrained`` to write an ``auto_map`` and copy this code,
    so a saved directory or Hub repo loads with ``AutoModel.from_pretrained(..., trust_remote_code=True)``.
    """
    try:
        AutoConfig.register("sohes", SohesConfig)
    except ValueError:
        if AutoConfig.for_model("sohes").__class__ is not SohesConfig:
            raise
    # AutoModel refuses a second registration of the same config class: then it is already done.
    with contextlib.suppress(ValueError):
        AutoModel.register(SohesConfig, SohesForHierarchicalSegmentation)
    SohesConfig.register_for_auto_class()
    SohesForHierarchicalSegmentation.register_for_auto_class("AutoModel")


# ``save_pretrained`` then writes ``auto_map`` into ``config.json`` and copies this file with its
# same-folder imports (``AutoModel.from_pretrained(repo, trust_remote_code=True)`` without
# sohes-hf). At import, like the image processor's: it only sets class attributes.
SohesConfig.register_for_auto_class()
SohesForHierarchicalSegmentation.register_for_auto_class("AutoModel")


__all__ = [
    "SohesForHierarchicalSegmentation",
    "SohesModelOutput",
    "SohesPreTrainedModel",
    "register_auto_classes",
]
