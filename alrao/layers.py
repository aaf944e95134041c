"""Classifier layers for the copies of an :class:`alrao.AlraoModel`.

Each layer is the "last layer" of the paper (section 3): it maps the
pre-classifier's output to a prediction. Alrao makes ``n_classifiers`` untied
copies of one of these and averages them with the switch.
"""

import torch
import torch.nn.functional as F
from torch import nn


class LinearClassifier(nn.Module):
    """Linear layer followed by a log-softmax: returns log-probabilities.

    Input ``(batch, in_features)``, output ``(batch, n_classes)``.
    """

    def __init__(self, in_features: int, n_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc(x), dim=-1)


class LinearClassifierRNN(nn.Module):
    """Decoder of a language model: log-probabilities of the next token.

    Input ``(seq_len, batch, nhid)`` (an RNN's output), output
    ``(seq_len * batch, ntoken)``, flattened so that ``nn.NLLLoss`` applies
    directly with targets of shape ``(seq_len * batch,)``.
    """

    def __init__(self, nhid: int, ntoken: int):
        super().__init__()
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.decoder(x.reshape(-1, x.shape[-1])), dim=-1)


class LinearRegressor(nn.Module):
    """Linear layer predicting a real vector (a regression copy)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)
