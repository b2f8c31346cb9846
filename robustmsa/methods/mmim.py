"""MMIM: MultiModal InfoMax, hierarchical mutual-information maximisation for multimodal fusion.

Paper: Han, Chen, Poria, "Improving Multimodal Fusion with Hierarchical Mutual Information Maximization for
Multimodal Sentiment Analysis", EMNLP 2021 (arXiv 2109.00412). Reference:
``declare-lab/Multimodal-Infomax@cd0774c`` (MIT): ``src/model.py``, ``src/modules/encoders.py``,
``src/solver.py``, ``src/config.py``; hyper-parameters in ``mmim.yaml`` beside this file (``src/config.py``
defaults and the README's ``--contrast`` run). Written from the reference's behaviour, not copied from it.
Details and decisions: ``docs/methods.md``. MECAM (``mecam.py``) builds on the classes of this module.

Architecture (reference widths: text 768, d_ah = d_vh = d_aout = d_vout = 16, d_prjh = 128):

1. text: the text backbone's first row ([CLS]); ``features`` reads the first row of the precomputed token
   features, ``hf:PATH`` a local transformers model fine-tuned at ``lr_bert`` (the reference fine-tunes
   bert-base-uncased); audio / vision: :class:`~robustmsa.methods.encoders.RNNEncoder` (1-layer LSTM over the
   valid frames, last hidden state -> Linear, hidden 16, out 16);
2. fusion :class:`FusionSubNet`: dropout 0.1 on ``[t, a, v]`` -> Linear -> tanh -> Linear -> tanh = fusion
   ``z`` (128) -> Linear -> ``y_hat``;
3. MMILB (:class:`MMILB`), pairs text -> vision, text -> audio and, with ``add_va``, vision -> audio: a
   Gaussian ``q(y|x)`` with ``mu = MLP(x)`` and ``logvar = MLP(x)`` (Linear, ReLU, Linear);
   ``lld = mean_batch sum_dims -(mu - y)^2 / (2 exp(logvar))`` (no ``-logvar / 2`` term and no output
   activation on ``logvar``: the reference's ``last_activation`` is never applied; kept). Entropy: ``y``
   projected by ``tanh(Linear(d_y -> d_y / 4))``, split by label sign (``y > 0`` / ``y < 0``; zero labels in
   neither), joined with the previous training batch's detached projections (memory of size 1),
   ``H = 1/4 (logdet S_pos + logdet S_neg)`` with full (biased) covariances;
4. CPC (:class:`CPC`) between the fusion and each modality: ``x~_m = Linear(z)``, both L2-normalised,
   ``nce_m = -mean_i [x_i . x~_i - logsumexp_j x_i . x~_j]`` (in-batch negatives),
   ``nce = nce_t + nce_a + nce_v``.

Training (the reference's ``--contrast`` two-stage loop, run per batch by :meth:`MMIM.training_step`):

- stage 0: the MMILB optimiser (Adam, ``lr_mmilb`` 1e-3, weight decay 1e-4, the MMILB modules' parameters)
  minimises ``-lld`` (MOSEI: only on the first half of each epoch's batches, ``mmilb_batch_fraction: 0.5``);
- stage 1: the main optimiser (Adam; text-encoder group ``lr_bert`` 5e-5 when it has trainable parameters,
  every other non-MMILB parameter ``lr_main`` 1e-3; weight decay 1e-4, L2 as in ``torch.optim.Adam``)
  minimises ``L1(y_hat, y) + alpha nce - beta lld``, minus ``beta H`` from the third batch of each epoch on
  (the reference's ``i_batch > mem_size``; ``H`` is first computed at the second); gradient-norm clip 1.0 in
  both stages;
- ``ReduceLROnPlateau(patience = when = 20, factor 0.5)`` on the main optimiser, stepped with the validation
  loss (the reference builds one for the MMILB optimiser too but never steps it); alpha 0.1, beta 0.1, batch
  32, 40 epochs, early stopping 10, Xavier-normal initialisation of every non-text-encoder weight with
  ``dim > 1``.

Repairs and decisions (what the reference does -> what we do -> why):

1. **Selection.** The reference keeps an epoch when the validation loss improves *and* the test MAE improves
   (test leakage) -> the engine's protocol: the validation L1 loss alone selects the checkpoint.
2. **Per-batch stages.** The reference runs a whole stage-0 epoch, then a whole stage-1 epoch over a new
   shuffle -> stage 0 then stage 1 on the same batch (the engine owns the loop; the update count per stage is
   unchanged). MOSEI's "stage 0 on the first 50 % of the batches" becomes the first half of each epoch's
   batches. The encoders run once per batch: stage 0 changes only the MMILB parameters, so their outputs are
   the same in both stages. Stage 0 reads them detached, so its gradient-norm clip sees the MMILB gradients
   only (the reference's clip also counts the encoders' gradients of ``-lld``, which its stage-0 optimiser
   never applies; Adam's step is nearly invariant to that rescaling); this halves the encoder work (the LSTMs,
   and BERT when fine-tuned).
3. **Entropy memory** is a local list of the training loop passed through ``forward`` -> an explicit
   :class:`EntropyMemory` (``model.entropy_memory``): the detached projections of the last ``entropy_memory``
   (1) stage-1 batches, cleared at the start of every epoch (the epoch length comes from
   :meth:`MMIM.configure_optimizers`). It is not part of the state dict and is read only in training mode: it
   enters ``H`` (a loss term), never a prediction, so eval predictions never depend on other samples.
4. **Entropy numerics.** ``logdet`` of a singular covariance is ``-inf`` (NaN gradients): a sign group with
   fewer than two samples, or fewer samples than dimensions, makes it singular -> groups with < 2 samples are
   skipped (contribute 0), and ``entropy_jitter`` (1e-4) times the mean variance (+ 1e-12) is added to the
   diagonal; the covariance and its log-determinant are computed in float64. The jitter changes each
   log-determinant by ``sum_i log(1 + 1e-4 mean / lambda_i)`` over the eigenvalues ``lambda_i``: about 1e-4
   per dimension when they are of similar size.
5. **Absent modalities.** The reference crashes on a zero audio length and clamps zero vision lengths to 1
   (reading a padding frame) -> the shared ``RNNEncoder`` (absent = zero LSTM state); CPC normalises with
   ``F.normalize`` (an all-zero vector stays zero instead of 0 / 0 = NaN). The entropy ``H`` leaves out the samples
   whose ``y`` modality is absent (length 0): their encodings are one constant vector, whose rows would make the
   covariance singular (the reference: ``logdet`` -inf, NaN gradients; with the jitter of item 4 alone a
   meaningless constant of about -27.6 per dimension); a group without two present samples is skipped. Nothing
   changes where every sample has the modality.
6. **Precision.** Under the engine's CUDA bf16 autocast, the MMILB, CPC and entropy terms run in float32.
7. **Kept as published** (documented, not repaired): ``logvar`` unbounded (the ``last_activation`` argument is
   ignored, and ``lld`` lacks the ``-logvar / 2`` term, so stage 0 can raise ``logvar`` without limit);
   ``model.zero_grad()`` of torch 1.7 (the reference's version) *zeroes* gradients instead of freeing them,
   and the entropy projections get gradients only in stage 1, where their (MMILB) optimiser does not step; so
   once ``H`` has reached the loss, every stage-0 Adam step sees a zero gradient plus weight decay and moves
   each projection weight by about ``lr_mmilb`` towards 0 (measured on ``synth``: mean ``|W|`` 0.24 -> 0.13 in
   5 epochs of 32 steps; at MOSI's 40 steps per epoch they reach about 0 within ~10 epochs). We zero the same
   way (``zero_grad_to_none: false``); ``true`` gives torch >= 2's behaviour (the projections then keep their
   initial values).
8. **Text.** The reference fine-tunes BERT; the default backbone ``features`` reads the precomputed [CLS] row,
   frozen by construction (``hf:PATH`` fine-tunes a local checkpoint at ``lr_bert``). With ``embedding`` the
   first row is the embedding of the [CLS] id, the same for every sample: MMIM then has no text information.
9. **Encoding reuse** (``unimodal_encoders``): :meth:`MMIM.encode_modality` is the [CLS] row or an
   ``RNNEncoder`` vector, :meth:`MMIM.forward_encoded` everything after (fusion, MMILB, CPC, ``H``); ``forward``
   encodes in the reference's order (text, audio, vision). Evaluation then recomputes only the modalities a
   corruption changed (``engine.reuse``).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..datasets.split import DatasetSpec
from .base import Batch, ConfigError, Method, Output, register_method
from .encoders import RNNEncoder
from .text_encoders import build_text_encoder

__all__ = [
    "CPC",
    "MI_PAIRS",
    "MMILB",
    "MMIM",
    "EntropyMemory",
    "FusionSubNet",
    "MMIMParts",
    "full_precision",
    "gaussian_logdet",
]

#: MMILB pairs: name -> (x modality, y modality); ``va`` only with ``add_va``.
MI_PAIRS: dict[str, tuple[str, str]] = {"tv": ("text", "vision"), "ta": ("text", "audio"),
                                         "va": ("vision", "audio")}


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Autocast off (float32 math) for the loss heads, on any device."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


# ------------------------------------------------------------------------------------------ blocks
class FusionSubNet(nn.Module):
    """MMIM's ``SubNet``: dropout -> Linear -> tanh -> Linear -> tanh (= fusion) -> Linear (= prediction)."""

    def __init__(self, in_size: int, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.linear_1 = nn.Linear(in_size, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)
        self.linear_3 = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, in) -> fusion (B, hidden), prediction (B,)."""
        fusion = torch.tanh(self.linear_2(torch.tanh(self.linear_1(self.drop(x)))))
        return fusion, self.linear_3(fusion).squeeze(-1)


class MMILB(nn.Module):
    """Modality MI lower bound: Gaussian ``q(y|x)`` (``mu``, ``logvar`` MLPs) and the entropy projection."""

    def __init__(self, x_size: int, y_size: int) -> None:
        super().__init__()
        self.mlp_mu = nn.Sequential(nn.Linear(x_size, y_size), nn.ReLU(), nn.Linear(y_size, y_size))
        self.mlp_logvar = nn.Sequential(nn.Linear(x_size, y_size), nn.ReLU(), nn.Linear(y_size, y_size))
        self.entropy_prj = nn.Sequential(nn.Linear(y_size, max(1, y_size // 4)), nn.Tanh())

    def lld(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``mean_batch sum_dims -(mu(x) - y)^2 / (2 exp(logvar(x)))`` (as published: no ``logvar`` term)."""
        mu, logvar = self.mlp_mu(x), self.mlp_logvar(x)
        return (-0.5 * (mu - y) ** 2 * torch.exp(-logvar)).sum(dim=-1).mean()

    def project(self, y: torch.Tensor) -> torch.Tensor:
        """The entropy estimator's projection ``tanh(Linear(y))`` (B, d_y // 4)."""
        return self.entropy_prj(y)


class CPC(nn.Module):
    """Contrastive predictive coding score of modality ``x`` from the fusion ``z`` (in-batch negatives).

    ``n_layers > 1`` as published: ``Linear(z, x)``, tanh, then ``n_layers - 1`` plain ``Linear(x, x)`` (the tanh
    only after the first layer, so layers 2.. compose to one affine map; kept, names ``net.0``, ``net.2``, ...).
    """

    def __init__(self, x_size: int, z_size: int, n_layers: int = 1) -> None:
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"cpc_layers must be >= 1, got {n_layers}")
        layers: list[nn.Module] = [nn.Linear(z_size, x_size)]
        if n_layers > 1:
            layers += [nn.Tanh()] + [nn.Linear(x_size, x_size) for _ in range(n_layers - 1)]
        self.net = layers[0] if n_layers == 1 else nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        prediction = F.normalize(self.net(z), dim=-1)
        x = F.normalize(x, dim=-1)
        positive = (x * prediction).sum(dim=-1)
        negative = torch.logsumexp(x @ prediction.t(), dim=-1)
        return -(positive - negative).mean()


def gaussian_logdet(samples: torch.Tensor, jitter: float) -> torch.Tensor | None:
    """``logdet`` of the biased covariance of ``samples`` (n, k) plus a small diagonal; None when n < 2.

    The diagonal is ``jitter * mean variance + 1e-12`` (detached); computed in float64, returned in float32.
    """
    if samples.shape[0] < 2:
        return None
    x = samples.double()
    centred = x - x.mean(dim=0, keepdim=True)
    cov = centred.t() @ centred / x.shape[0]
    ridge = float(jitter) * torch.diagonal(cov).mean().detach() + 1e-12
    cov = cov + ridge * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    return torch.logdet(cov).float()


class EntropyMemory:
    """The detached entropy projections of the last ``size`` stage-1 batches, per MMILB pair and label sign.

    An explicit training state (not in the state dict): :meth:`MMIM.training_step` pushes each batch after its
    update and clears it at the start of every epoch; only training-mode forwards read it, for ``H``.
    """

    def __init__(self, size: int = 1) -> None:
        if size < 1:
            raise ConfigError(f"entropy_memory must be >= 1, got {size}")
        self.size = int(size)
        self._batches: deque[dict[str, tuple[torch.Tensor, torch.Tensor]]] = deque(maxlen=self.size)

    def __len__(self) -> int:
        return len(self._batches)

    def clear(self) -> None:
        self._batches.clear()

    def push(self, projections: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._batches.append({pair: (pos.detach(), neg.detach()) for pair, (pos, neg) in projections.items()})

    def history(self, pair: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The stored positive and negative projections of ``pair``, oldest first."""
        stored = [batch[pair] for batch in self._batches if pair in batch]
        return [pos for pos, _ in stored], [neg for _, neg in stored]


@dataclass
class MMIMParts:
    """Everything one forward computes (``fusion`` and later fields are None after a stage-0 forward)."""

    lld: torch.Tensor
    lld_terms: dict[str, torch.Tensor]
    pred: torch.Tensor | None = None
    fusion: torch.Tensor | None = None
    nce: torch.Tensor | None = None
    nce_terms: dict[str, torch.Tensor] = field(default_factory=dict)
    H: torch.Tensor | None = None
    H_terms: dict[str, torch.Tensor] = field(default_factory=dict)
    projections: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None


# ------------------------------------------------------------------------------------------ model
@register_method
class MMIM(Method):
    """MMIM (declare-lab/Multimodal-Infomax@cd0774c); see the module docstring."""

    name = "mmim"
    paper = ("Han, Chen, Poria, Improving Multimodal Fusion with Hierarchical Mutual Information "
             "Maximization for Multimodal Sentiment Analysis, EMNLP 2021")
    reference = "declare-lab/Multimodal-Infomax@cd0774c src/model.py"

    def __init__(self, spec: DatasetSpec, config: Mapping[str, Any]) -> None:
        super().__init__(spec, config)
        c = self.config
        self.text_encoder = build_text_encoder(c["text_backbone"], spec,
                                               finetune=bool(c.get("finetune_text", True)),
                                               vocab_size=int(c.get("text_vocab_size", 30522)))
        n_layer, bidirectional = int(c["n_layer"]), bool(c["bidirectional"])
        self.dims = {"text": int(self.text_encoder.out_dim), "audio": int(c["d_aout"]),
                     "vision": int(c["d_vout"])}
        self.acoustic_enc = RNNEncoder(int(spec.dims["audio"]), int(c["d_ah"]), self.dims["audio"],
                                       num_layers=n_layer, bidirectional=bidirectional,
                                       dropout=float(c["dropout_a"]) if n_layer > 1 else 0.0)
        self.visual_enc = RNNEncoder(int(spec.dims["vision"]), int(c["d_vh"]), self.dims["vision"],
                                     num_layers=n_layer, bidirectional=bidirectional,
                                     dropout=float(c["dropout_v"]) if n_layer > 1 else 0.0)
        self.pairs = [p for p in MI_PAIRS if p != "va" or bool(c["add_va"])]
        self.mi = nn.ModuleDict({p: MMILB(self.dims[MI_PAIRS[p][0]], self.dims[MI_PAIRS[p][1]])
                                 for p in self.pairs})
        self._build_heads()
        self.entropy_memory = EntropyMemory(int(c.get("entropy_memory", 1)))
        self._steps_per_epoch: int | None = None
        self._steps_seen = 0
        self._init_weights()

    # ------------------------------------------------------------------ construction hooks
    def _build_heads(self) -> None:
        """CPC estimators and the fusion network (MECAM replaces the CPC)."""
        c = self.config
        hidden = int(c["d_prjh"])
        self.cpc = nn.ModuleDict({m: CPC(self.dims[m], hidden, int(c.get("cpc_layers", 1)))
                                  for m in ("text", "vision", "audio")})
        self.fusion_prj = FusionSubNet(sum(self.dims.values()), hidden, float(c["dropout_prj"]))

    def _init_weights(self) -> None:
        """Xavier-normal init of every weight with ``dim > 1`` outside the text encoder (reference solver)."""
        text = {id(p) for p in self.text_encoder.parameters()}
        for p in self.parameters():
            if id(p) not in text and p.dim() > 1:
                nn.init.xavier_normal_(p)

    # ------------------------------------------------------------------ forward pieces
    #: Text backbone ([CLS] row) and the two LSTM encoders each read one modality; fusion, MMILB and CPC
    #: come after them (:meth:`forward_encoded`).
    unimodal_encoders = ("text", "audio", "vision")
    #: The order in which :meth:`encode` runs the encoders: the reference's (text backbone, audio, vision),
    #: so that training draws the same random numbers (dropout of a fine-tuned text backbone).
    _encoder_order = ("text", "audio", "vision")

    def encode_modality(self, batch: Batch, modality: str) -> torch.Tensor:
        """``text``: the backbone's first row ([CLS]) (B, d_t); ``audio`` / ``vision``: the LSTM vector (B, d_m)."""
        if modality == "text":
            # a copy of the row, so that kept encodings do not hold on to the whole token tensor
            return self.text_encoder(batch)[:, 0].contiguous()
        if modality == "audio":
            return self.acoustic_enc(batch.audio, batch.audio_lengths)
        if modality == "vision":
            return self.visual_enc(batch.vision, batch.vision_lengths)
        raise ValueError(f"{self.name}: unknown modality {modality!r}")

    def unpack(self, encoded: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The named pieces the later stages read, from :meth:`encode_modality`'s outputs (MMIM: the same)."""
        return {m: encoded[m] for m in ("text", "audio", "vision")}

    def encode(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Unimodal vectors ``text`` ([CLS] row), ``audio``, ``vision`` (B, d_m) (MECAM adds its sequences)."""
        return self.unpack({m: self.encode_modality(batch, m) for m in self._encoder_order})

    def fuse(self, batch: Batch, enc: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Fusion ``z`` (B, d_prjh) and prediction (B,) from ``[text, audio, vision]``."""
        return self.fusion_prj(torch.cat([enc["text"], enc["audio"], enc["vision"]], dim=-1))

    def contrastive(self, enc: Mapping[str, torch.Tensor], fusion: torch.Tensor,
                    labels: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``nce`` (sum of the CPC terms fusion -> modality) and its terms."""
        with full_precision(fusion.device):
            terms = {m: cpc(enc[m].float(), fusion.float()) for m, cpc in self.cpc.items()}
        return sum(terms.values()), terms

    def mmilb_lld(self, enc: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``lld`` (sum over the MMILB pairs, float32) and its terms."""
        with full_precision(enc["text"].device):
            terms = {p: self.mi[p].lld(enc[MI_PAIRS[p][0]].float(), enc[MI_PAIRS[p][1]].float())
                     for p in self.pairs}
        return sum(terms.values()), terms

    @staticmethod
    def present(batch: Batch, modality: str) -> torch.Tensor:
        """(B,) bool: the samples whose ``modality`` (audio or vision) has at least one valid frame."""
        return getattr(batch, f"{modality}_lengths") > 0

    def compute(self, batch: Batch, *, labels: torch.Tensor | None = None,
                enc: Mapping[str, torch.Tensor] | None = None) -> MMIMParts:
        """One forward (from ``enc`` when given): ``lld``, fusion, prediction and ``nce``; with ``labels``,
        the entropy projections and ``H`` (from :attr:`entropy_memory`; 0 while it is empty)."""
        enc = self.encode(batch) if enc is None else enc
        device = enc["text"].device
        parts = MMIMParts(*self.mmilb_lld(enc))
        parts.fusion, parts.pred = self.fuse(batch, enc)
        parts.nce, parts.nce_terms = self.contrastive(enc, parts.fusion, labels)
        parts.H = torch.zeros((), device=device)
        if labels is None:
            return parts
        parts.projections = {}
        with full_precision(device):
            for p in self.pairs:
                target = MI_PAIRS[p][1]
                projected = self.mi[p].project(enc[target].float())
                # Absent samples (length 0) are left out of the entropy groups: an absent modality has one
                # constant encoding, so its rows make the covariance singular (the reference: logdet -inf and NaN
                # gradients; with our jitter alone a meaningless constant of about -27.6 per dimension).
                present = self.present(batch, target)
                pos, neg = projected[(labels > 0) & present], projected[(labels < 0) & present]
                parts.projections[p] = (pos, neg)
                if not len(self.entropy_memory):
                    continue
                old_pos, old_neg = self.entropy_memory.history(p)
                jitter = float(self.config["entropy_jitter"])
                logdets = [gaussian_logdet(torch.cat(old + [new], dim=0), jitter)
                           for old, new in ((old_pos, pos), (old_neg, neg))]
                present = [value for value in logdets if value is not None]
                if present:
                    parts.H_terms[p] = 0.25 * sum(present)
        if parts.H_terms:
            parts.H = sum(parts.H_terms.values())
        return parts

    def forward_encoded(self, batch: Batch, encoded: Mapping[str, torch.Tensor]) -> Output:
        """:meth:`forward` from the encodings of :meth:`encode_modality` (every modality)."""
        parts = self.compute(batch, labels=batch.labels if self.training else None, enc=self.unpack(encoded))
        return Output(pred=parts.pred, aux_losses={"nce": parts.nce, "lld": parts.lld, "H": parts.H})

    def forward(self, batch: Batch) -> Output:
        """Prediction and ``aux_losses`` ``nce``, ``lld``, ``H``. Labels and the entropy memory are used only
        in training mode (for ``H`` and label-based contrastive terms); the prediction never uses them."""
        return self.forward_encoded(batch, {m: self.encode_modality(batch, m) for m in self._encoder_order})

    # ------------------------------------------------------------------ objective
    def _contrast_terms(self, nce: torch.Tensor, lld: torch.Tensor) -> torch.Tensor:
        """Stage-1 terms besides criterion and ``H``: ``alpha nce - beta lld``; 0 without ``contrast``."""
        c = self.config
        if not c["contrast"]:
            return torch.zeros_like(lld)
        return float(c["alpha"]) * nce - float(c["beta"]) * lld

    def objective(self, y_loss: torch.Tensor, nce: torch.Tensor, lld: torch.Tensor, H: torch.Tensor,
                  *, with_entropy: bool = True) -> torch.Tensor:
        """The stage-1 loss ``criterion + alpha nce - beta lld (- beta H)``."""
        total = y_loss + self._contrast_terms(nce, lld)
        if with_entropy:
            total = total - float(self.config["beta"]) * H
        return total

    def loss(self, batch: Batch, output: Output) -> tuple[torch.Tensor, dict[str, float]]:
        """The stage-1 objective on a forward's output (``H`` as computed: 0 while the memory is empty)."""
        y_loss = self.criterion(output.pred, batch.labels)
        aux = output.aux_losses
        total = self.objective(y_loss, aux["nce"], aux["lld"], aux["H"])
        parts = {"criterion": float(y_loss.detach())}
        parts.update({key: float(value.detach()) for key, value in aux.items()})
        return total, parts

    # ------------------------------------------------------------------ optimisation
    def mmilb_parameters(self) -> list[nn.Parameter]:
        """Parameters of the MMILB modules (stage 0's optimiser; the reference's names containing ``mi``)."""
        return list(self.mi.parameters())

    def configure_optimizers(self, epochs: int, steps_per_epoch: int):
        """[MMILB Adam, main Adam (text-encoder group + the rest)], [ReduceLROnPlateau on the main one]."""
        c = self.config
        mmilb = self.mmilb_parameters()
        text_all = list(self.text_encoder.parameters())
        text = [p for p in text_all if p.requires_grad]
        excluded = {id(p) for p in mmilb + text_all}
        main = [p for p in self.parameters() if id(p) not in excluded and p.requires_grad]
        optimizer_mmilb = torch.optim.Adam(mmilb, lr=float(c["lr_mmilb"]),
                                           weight_decay=float(c["weight_decay_mmilb"]))
        groups = []
        if text:
            groups.append({"params": text, "lr": float(c["lr_bert"]),
                           "weight_decay": float(c["weight_decay_bert"])})
        groups.append({"params": main, "lr": float(c["lr_main"]),
                       "weight_decay": float(c["weight_decay_main"])})
        optimizer_main = torch.optim.Adam(groups)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer_main, mode="min",
                                                             patience=int(c["when"]),
                                                             factor=float(c.get("plateau_factor", 0.5)))
        self._steps_per_epoch = max(1, int(steps_per_epoch)) if steps_per_epoch else None
        self._steps_seen = 0
        self.entropy_memory.clear()
        return [optimizer_mmilb, optimizer_main], [plateau]

    def _next_batch_index(self) -> int:
        """This step's batch index within its epoch (0-based); the memory is cleared at index 0."""
        index = self._steps_seen % self._steps_per_epoch if self._steps_per_epoch else self._steps_seen
        self._steps_seen += 1
        if index == 0:
            self.entropy_memory.clear()
        return index

    def _runs_stage0(self, index: int) -> bool:
        if not self.config["contrast"]:
            return False
        fraction = float(self.config.get("mmilb_batch_fraction", 1.0))
        if fraction >= 1.0 or self._steps_per_epoch is None:
            return True
        return index / self._steps_per_epoch < fraction

    def _zero_grad(self) -> None:
        self.zero_grad(set_to_none=bool(self.config.get("zero_grad_to_none", False)))

    def _clip(self) -> None:
        clip = self.config.get("grad_clip")
        if clip:
            nn.utils.clip_grad_norm_(self.parameters(), float(clip))

    def training_step(self, batch: Batch, optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
        """Stage 0 (MMILB optimiser, ``-lld``), then stage 1 (main optimiser, full objective) on ``batch``.

        The encoders run once: stage 0 only changes the MMILB parameters, so their outputs are the same in
        both stages; stage 0 reads them detached (its clip covers the MMILB gradients; module docstring).
        """
        optimizer_mmilb, optimizer_main = optimizers
        index = self._next_batch_index()
        out: dict[str, float] = {}
        enc = self.encode(batch)
        if self._runs_stage0(index):
            self._zero_grad()
            lld0, _ = self.mmilb_lld({key: value.detach() for key, value in enc.items()})
            (-lld0).backward()
            self._clip()
            optimizer_mmilb.step()
            out["stage0_lld"] = float(lld0.detach())
        self._zero_grad()
        parts = self.compute(batch, labels=batch.labels, enc=enc)
        y_loss = self.criterion(parts.pred, batch.labels)
        with_entropy = index > self.entropy_memory.size
        total = self.objective(y_loss, parts.nce, parts.lld, parts.H, with_entropy=with_entropy)
        total.backward()
        self._clip()
        optimizer_main.step()
        self.entropy_memory.push(parts.projections)
        out.update({"loss": float(total.detach()), "criterion": float(y_loss.detach()),
                    "nce": float(parts.nce.detach()), "lld": float(parts.lld.detach()),
                    "H": float(parts.H.detach())})
        return out
