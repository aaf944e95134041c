"""The recurrent language-model pre-classifier of the paper's Penn Treebank experiment."""

import torch
from torch import nn

#: Accepted ``rnn_type`` values and the torch module each one builds.
RNN_TYPES = {
    "LSTM": (nn.LSTM, {}),
    "GRU": (nn.GRU, {}),
    "RNN_TANH": (nn.RNN, {"nonlinearity": "tanh"}),
    "RNN_RELU": (nn.RNN, {"nonlinearity": "relu"}),
}


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"RNNModel: {name} must be a positive integer, got {value!r}")


class RNNModel(nn.Module):
    """Embedding -> dropout -> multi-layer RNN (dropout between layers) -> dropout.

    The decoder (the last Linear of a language model) is left out: Alrao
    replaces it by its classifier copies (:class:`alrao.LinearClassifierRNN`).
    The paper's character-level model is ``RNNModel(ntoken≈50, 100, 100, 2)``.

    Args:
        ntoken: vocabulary size.
        ninp: embedding size.
        nhid: hidden units per layer; also ``num_features``, the output width.
        nlayers: number of stacked recurrent layers.
        dropout: dropout probability after the embedding, between recurrent
            layers and on the output.
        rnn_type: one of ``'LSTM'`` (the paper's), ``'GRU'``, ``'RNN_TANH'``, ``'RNN_RELU'``.

    ``forward(input, hidden)``: ``input`` is a LongTensor ``(seq_len, batch)``
    of token ids; returns ``(output, hidden)`` with ``output`` of shape
    ``(seq_len, batch, nhid)`` and the new hidden state, to be carried over to
    the next bptt chunk (detached by the caller).
    """

    def __init__(self, ntoken, ninp, nhid, nlayers, dropout=0.2, rnn_type="LSTM"):
        super().__init__()
        for name, value in (("ntoken", ntoken), ("ninp", ninp), ("nhid", nhid), ("nlayers", nlayers)):
            _check_positive_int(name, value)
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ValueError(f"RNNModel: dropout must be a probability in [0, 1), got {dropout!r}")
        if rnn_type not in RNN_TYPES:
            raise ValueError(f"RNNModel: unknown rnn_type {rnn_type!r}; valid: {', '.join(RNN_TYPES)}")
        rnn_class, kwargs = RNN_TYPES[rnn_type]
        self.rnn_type, self.nhid, self.nlayers = rnn_type, nhid, nlayers
        self.num_features = nhid
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        # torch applies this dropout between layers only; with one layer it would only warn.
        self.rnn = rnn_class(ninp, nhid, nlayers, dropout=dropout if nlayers > 1 else 0.0, **kwargs)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)

    def forward(self, input: torch.Tensor, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(input)), hidden)
        return self.drop(output), hidden

    def init_hidden(self, batch_size: int):
        """Zero hidden state for ``batch_size`` streams: a pair ``(h, c)`` for an
        LSTM, one tensor otherwise; each ``(nlayers, batch_size, nhid)``."""
        weight = self.encoder.weight
        if self.rnn_type == "LSTM":
            return (
                weight.new_zeros(self.nlayers, batch_size, self.nhid),
                weight.new_zeros(self.nlayers, batch_size, self.nhid),
            )
        return weight.new_zeros(self.nlayers, batch_size, self.nhid)
