"""The PyTorch peer of bin/benchmark: torch-rnn's model (Embedding, nn.LSTM/GRU/RNN, Linear) and train
step (Adam, elementwise gradient clipping at 5, state carried between batches), for side-by-side timing.

Only the benchmark's worker process imports this module (PyTorch: pip install 'kerascharrnn[bench]').
"""


def train_step_fn(config: dict, vocab_size: int):
    """A PyTorch train step for the same configuration: (x, y) numpy (N, T) -> loss (a float: finished)."""
    import torch
    from torch import nn

    kinds = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

    class CharRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab_size, 64)
            self.rnn = kinds[config["model_type"]](64, config["rnn_size"], config["num_layers"], batch_first=True)
            self.logits = nn.Linear(config["rnn_size"], vocab_size)

        def forward(self, x, state):
            out, state = self.rnn(self.embedding(x), state)
            return self.logits(out), state

    model = CharRNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, eps=1e-8)
    loss_fn = nn.CrossEntropyLoss()
    carried = {"state": None}

    def step(x, y):
        x, y = torch.from_numpy(x).long(), torch.from_numpy(y).long()
        optimizer.zero_grad()
        logits, state = model(x, carried["state"])
        loss = loss_fn(logits.reshape(-1, vocab_size), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_value_(model.parameters(), 5.0)
        optimizer.step()
        # truncated BPTT: carry the state, not its history
        carried["state"] = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        return float(loss)

    return step
