# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Alrao on your own model
#
# This notebook trains a network written for it, not one of the project's `models/`, with **Alrao**
# (*All Learning Rates At Once*), and shows what happens inside. It runs top to bottom in under a
# minute on a 2-core CPU (measured: 26 s alone, 71 s on a loaded machine), with no download: start
# it from the repository root (`pip install -e ".[notebook]"`, then `jupyter notebook tutorial.ipynb`),
# where `alrao` and the project's `data` package can be imported.
#
# Contents: 1. what Alrao does; 2. your model, split in two; 3. training, against SGD and Adam;
# 4. what Alrao did inside; 5. method forwarding and pre-classifiers that return tuples;
# 6. regression; 7. Alrao-Adam, saving and resuming.

# %% [markdown]
# ## 1. What Alrao does
#
# Alrao (Blier, Wolinski and Ollivier, *Learning with Random Learning Rates*, 2018) trains a network
# without a learning-rate search. Each **feature** of the network's body, the **pre-classifier** (a unit
# of a linear layer, a filter of a convolution, a hidden unit of a recurrent layer), gets its own
# learning rate, drawn once, log-uniformly in a wide interval such as $[10^{-5}, 10]$. The last layer is
# replaced by $N$ **classifier copies** with log-spaced learning rates on the same interval, and the
# model predicts with their average, weighted by the **switch** posterior, a Bayesian model averaging
# that moves its weight to whichever copy predicts best at the moment.
#
# The update rule. A parameter $w$ of feature $f$ of the pre-classifier follows the gradient of the
# averaged model's loss $L_{\text{Alrao}}$, at its feature's rate:
#
# $$\log \eta_f \sim \mathcal{U}\left(\log \eta_{\min}, \log \eta_{\max}\right) \text{ (drawn once)}, \qquad
# w \leftarrow w - \eta_f \, \frac{\partial L_{\text{Alrao}}}{\partial w}.$$
#
# Copy $j$ (parameters $\theta_j$) is trained on its own loss $L_j$, as if it were the model's only output:
#
# $$\log \eta_j = \log \eta_{\min} + \frac{j - 1}{N - 1} \log \frac{\eta_{\max}}{\eta_{\min}}, \qquad
# \theta_j \leftarrow \theta_j - \eta_j \, \frac{\partial L_j}{\partial \theta_j},$$
#
# and the model's prediction is $p_{\text{Alrao}}(y \mid x) = \sum_j a_j \, p_j(y \mid x)$, where the
# switch posterior $a_j$ is updated after every mini-batch from the copies' losses on that batch.
#
# ### Setup
#
# The sizes of the runs are in the next cell. The outputs shown come from the full-size run; the test
# suite sets `ALRAO_TUTORIAL_QUICK=1` to shrink them to a smoke run.

# %%
import os

QUICK = os.environ.get("ALRAO_TUTORIAL_QUICK") == "1"
EPOCHS = 1 if QUICK else 15             # epochs of each digits run (sections 3 and 7)
LIMIT = 64 if QUICK else None           # at most this many digits per split (None: all of them)
REGRESSION_EPOCHS = 2 if QUICK else 60  # epochs on the synthetic regression set (section 6)
SEED = 0
print("quick smoke run:" if QUICK else "full-size run:",
      f"EPOCHS={EPOCHS}, LIMIT={LIMIT}, REGRESSION_EPOCHS={REGRESSION_EPOCHS}, SEED={SEED}")

# %%
import math
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import alrao
from data import get_image_loaders  # the project's offline datasets

# %matplotlib inline

# %% [markdown]
# ## 2. Your model, split in two
#
# Alrao needs the network in two parts:
# - the **pre-classifier**: any `nn.Module` from the input to a feature vector (everything but the last layer);
# - a **classifier class**: the last layer, returning **log-probabilities**. The switch reads each copy's
#   loss as a negative log-likelihood in nats, so `nn.NLLLoss` on log-probabilities is the loss to use.
#
# Here is a small convolutional network for the digits of section 3. They are 8x8 images, upsampled
# to 32x32 RGB so that CIFAR-10 networks apply; the network averages the 4x4 blocks back to 8x8 first.
# Each class has one extra method, used in section 5.

# %%
class DigitFeatures(nn.Module):
    """Pre-classifier: images (B, 3, 32, 32) -> features (B, out_features)."""

    def __init__(self, width=32, out_features=128):
        super().__init__()
        self.out_features = out_features
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 2 * 2, out_features)

    def feature_maps(self, x):
        """Activations of the second convolution, (B, 2 * width, 4, 4)."""
        x = F.avg_pool2d(x, 4)                     # undo the 4x upsampling: (B, 3, 8, 8)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        return F.relu(self.conv2(x))

    def forward(self, x):
        x = F.max_pool2d(self.feature_maps(x), 2)  # (B, 2 * width, 2, 2)
        return F.relu(self.fc(x.flatten(1)))


class DigitClassifier(nn.Module):
    """Classifier: features (B, in_features) -> log-probabilities (B, n_classes)."""

    def __init__(self, in_features, n_classes):
        super().__init__()
        self.fc = nn.Linear(in_features, n_classes)

    def logits(self, x):
        """Scores before the softmax, (B, n_classes)."""
        return self.fc(x)

    def forward(self, x):
        return F.log_softmax(self.logits(x), dim=-1)


# %% [markdown]
# `AlraoModel` takes the task, the loss, the pre-classifier, the number of copies, and the
# classifier class followed by its arguments: each copy is `DigitClassifier(128, 10)`, with its own
# initialisation. `AlraoSGD` then draws one learning rate per feature of the pre-classifier and gives
# copy $j$ the rate $\eta_j$; `min_lr` and `max_lr` are learning rates, not their log10. The interval
# is the paper's, $[10^{-5}, 10]$, with its 10 copies.

# %%
torch.manual_seed(SEED)
preclassifier = DigitFeatures(out_features=128)
model = alrao.AlraoModel('classification', nn.NLLLoss(), preclassifier,
                         10,                                # classifier copies
                         DigitClassifier, 128, 10)          # each copy: DigitClassifier(128, 10)
optimizer = alrao.AlraoSGD(model, min_lr=1e-5, max_lr=10.0)  # learning rates, not their log10


def n_parameters(module):
    return sum(p.numel() for p in module.parameters())


print(f"pre-classifier: {n_parameters(model.preclassifier):,} parameters; {len(model.classifiers)} copies "
      f"of {n_parameters(model.classifiers[0]):,} parameters each")
print("the copies' learning rates:", ", ".join(f"{lr:.1e}" for lr in optimizer.classifier_lrs()))

# %% [markdown]
# ## 3. Training: Alrao-SGD against SGD and Adam
#
# The data: the 1,797 handwritten digits that ship with scikit-learn, split once and for all into
# 1,197 training, 300 validation and 300 test images, in batches of 32 as in the paper, without
# augmentation. `get_image_loaders` returns reproducible loaders: the order of an epoch's batches
# depends on `(seed, epoch)` only.

# %%
# The digits ship with scikit-learn: no data path, no download.
train_loader, valid_loader, test_loader, n_classes = get_image_loaders(
    'digits', None, 32, data_augm=False, device='cpu', seed=SEED, limit=LIMIT)
x, y = next(iter(valid_loader))
print(f"{len(train_loader)} training batches per epoch; a batch: x {tuple(x.shape)}, y {tuple(y.shape)}; "
      f"{n_classes} classes")


# %% [markdown]
# The training loop is the usual one. With an `AlraoModel`, the loss comes from `model.loss`
# (the averaged model's loss: its backward pass also trains each copy on its own loss), and
# `model.update_switch()` follows each step. `fit` trains either kind of model.

# %%
def evaluate(model, loader):
    """Mean loss (nats) and accuracy of `model` on `loader`; for an AlraoModel, also each
    copy's mean loss, a tensor of shape (n_classifiers,)."""
    is_alrao = isinstance(model, alrao.AlraoModel)
    model.eval()
    loss_sum, copy_loss_sum, correct, n = 0.0, 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            output = model(x)
            if is_alrao:
                loss = model.loss(output, y)
                copy_loss_sum = copy_loss_sum + model.last_copy_losses * len(y)  # set by model.loss
            else:
                loss = F.nll_loss(output, y)
            loss_sum += loss.item() * len(y)
            correct += (output.argmax(dim=1) == y).sum().item()
            n += len(y)
    model.train()
    return loss_sum / n, correct / n, (copy_loss_sum / n if is_alrao else None)


def fit(model, optimizer, epochs, first_epoch=0):
    """Train `model` for `epochs` epochs, numbered from `first_epoch`. Returns the validation loss
    after each epoch and, for an AlraoModel, the switch posterior after each step and each copy's
    validation loss after each epoch."""
    is_alrao = isinstance(model, alrao.AlraoModel)
    history = {'valid_loss': [], 'posterior': [], 'copy_valid_loss': []}
    for epoch in range(first_epoch, first_epoch + epochs):
        train_loader.set_epoch(epoch)
        for x, y in train_loader:
            output = model(x)
            loss = model.loss(output, y) if is_alrao else F.nll_loss(output, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if is_alrao:
                model.update_switch()  # posterior update from this batch's per-copy losses
                history['posterior'].append(model.posterior())
        valid_loss, _, copy_valid_loss = evaluate(model, valid_loader)
        history['valid_loss'].append(valid_loss)
        history['copy_valid_loss'].append(copy_valid_loss)
    return history


# %% [markdown]
# Alrao-SGD runs once, with the interval above. The baselines are the same network with a
# single classifier, trained by plain SGD at three rates of the paper's grid
# $\{10^{-5}, 10^{-4}, \dots, 10\}$, too small ($10^{-3}$), good ($10^{-1}$, the best of the grid on
# this network) and too large ($10$), and by Adam with its default hyper-parameters. Finding the good
# SGD rate takes a search; Alrao does without one.

# %%
ALRAO_RUN = 'Alrao-SGD [1e-5, 10]'
histories = {ALRAO_RUN: fit(model, optimizer, EPOCHS)}
trained = {ALRAO_RUN: model}

baselines = {
    'SGD lr=1e-3 (too small)': lambda parameters: torch.optim.SGD(parameters, lr=1e-3),
    'SGD lr=1e-1 (good)': lambda parameters: torch.optim.SGD(parameters, lr=1e-1),
    'SGD lr=10 (too large)': lambda parameters: torch.optim.SGD(parameters, lr=10.0),
    'Adam (defaults)': lambda parameters: torch.optim.Adam(parameters),
}
for name, make_optimizer in baselines.items():
    torch.manual_seed(SEED)
    network = nn.Sequential(DigitFeatures(out_features=128), DigitClassifier(128, 10))
    histories[name] = fit(network, make_optimizer(network.parameters()), EPOCHS)
    trained[name] = network

fig, ax = plt.subplots(figsize=(8, 4.5))
for name, history in histories.items():
    ax.plot(range(1, EPOCHS + 1), history['valid_loss'], marker='.', label=name,
            linewidth=3 if name == ALRAO_RUN else 1.2, color='black' if name == ALRAO_RUN else None)
ax.set(xlabel='epoch', ylabel='validation loss (nats)', yscale='log',
       title='Digits: validation loss per epoch')
ax.legend()
plt.show()

# %%
print(f"| {'run':<24} | test loss (nats) | test accuracy |")
print(f"|{'-' * 26}|-----------------:|--------------:|")
test_losses = {}
for name, network in trained.items():
    test_loss, test_accuracy, _ = evaluate(network, test_loader)
    test_losses[name] = test_loss
    print(f"| {name:<24} | {test_loss:16.3f} | {test_accuracy:13.1%} |")

# Read the ordering from the numbers rather than state it: it may differ from run to run.
alrao_loss = test_losses[ALRAO_RUN]
for name in ('SGD lr=1e-1 (good)', 'Adam (defaults)'):
    relation = 'lower than' if alrao_loss < test_losses[name] else 'higher than'
    print(f"Alrao's test loss is {relation} {name}'s ({alrao_loss:.3f} vs {test_losses[name]:.3f})")

# %% [markdown]
# Compare Alrao, with no learning rate chosen, with SGD at its good rate and with Adam: the lines
# above say which test loss is lower in this run (on the paper's CIFAR-10 networks Alrao was usually
# slightly behind the best tuned optimizer, ahead on some). SGD at the rates that are too small
# (still learning) or too large (stuck at chance) shows what a bad choice of rate costs. The
# validation curves show how Alrao starts: in the first epochs the switch is still looking for the
# good copies (section 4).

# %% [markdown]
# ## 4. What Alrao did inside
#
# The feature learning rates live in the optimizer's state. `optimizer.feature_lrs()` maps each
# parameter to its rates, in a compact shape that broadcasts against the parameter: one rate per
# output channel of a convolution (`(out, 1, 1, 1)`), per output unit of a linear layer (`(out, 1)`),
# shared by the feature's weights and its bias.

# %%
rates = optimizer.feature_lrs()
for name, parameter in model.preclassifier.named_parameters():
    print(f"{name:<13} {str(tuple(parameter.shape)):<16} rates of shape {tuple(rates[parameter].shape)}")

# One rate per feature: the weights' rates (each bias shares its feature's rate).
feature_rates = torch.cat([rates[p].flatten() for name, p in model.preclassifier.named_parameters()
                           if name.endswith('weight')])
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.hist(feature_rates.numpy(), bins=np.logspace(-5, 1, 25), alpha=0.8,
        label=f'{len(feature_rates)} features of the pre-classifier')
for j, lr in enumerate(optimizer.classifier_lrs()):
    ax.axvline(lr, color='tab:orange', label='the 10 classifier copies' if j == 0 else None)
ax.set(xscale='log', xlabel='learning rate', ylabel='number of features',
       title='Learning rates drawn by AlraoSGD (log-uniform in [1e-5, 10])')
ax.legend()
plt.show()

# %% [markdown]
# The switch starts with a uniform posterior over the copies and moves it, batch after batch, to
# the copies whose loss on it is lowest (measured before the step that learns from the batch). Left:
# the posterior after each training step; right: each copy's validation loss after each epoch. The
# copies whose rate is too small are still learning; those whose rate is too large have a high and
# jumpy loss. The colours are the same on both sides.

# %%
posterior = torch.stack(histories[ALRAO_RUN]['posterior'])  # (steps, copies)
copy_loss = torch.stack(histories[ALRAO_RUN]['copy_valid_loss'])  # (epochs, copies)
copy_lrs = optimizer.classifier_lrs()
colors = plt.cm.viridis(np.linspace(0, 1, len(copy_lrs)))
labels = [f'copy {j}, lr {lr:.1e}' for j, lr in enumerate(copy_lrs)]

fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
epochs_done = np.arange(1, len(posterior) + 1) / len(train_loader)
left.stackplot(epochs_done, posterior.T.numpy(), colors=colors, labels=labels)
left.set(xlabel='epoch', ylabel='switch posterior', ylim=(0, 1), xlim=(0, EPOCHS),
         title='Switch posterior over the copies')
for j in range(len(copy_lrs)):
    right.plot(range(1, EPOCHS + 1), copy_loss[:, j].numpy(), marker='.', color=colors[j], label=labels[j])
right.set(xlabel='epoch', ylabel='validation loss (nats)', yscale='log', title="Each copy's validation loss")
right.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))
plt.tight_layout()
plt.show()

print("| copy | learning rate | final posterior | validation loss (nats) |")
print("|-----:|--------------:|----------------:|-----------------------:|")
for j, (lr, weight, loss) in enumerate(zip(copy_lrs, model.posterior().tolist(), copy_loss[-1].tolist())):
    print(f"| {j:4d} | {lr:13.1e} | {weight:15.4f} | {loss:22.3f} |")

# %% [markdown]
# ## 5. Method forwarding, and pre-classifiers that return tuples
#
# Methods of your own classes stay reachable through the Alrao model once forwarded:
# `model.method_fwd_preclassifier(name)` makes `model.name(...)` call the pre-classifier's method, and
# `model.method_fwd_classifiers(name)` makes it call every copy's method and return the list of results.

# %%
model.method_fwd_preclassifier('feature_maps')
model.method_fwd_classifiers('logits')

x, y = next(iter(valid_loader))
with torch.no_grad():
    maps = model.feature_maps(x)                   # DigitFeatures.feature_maps
    logits = model.logits(model.preclassifier(x))  # [copy.logits(...) for copy in model.classifiers]
assert torch.equal(maps, model.preclassifier.feature_maps(x))
print(f"model.feature_maps(x): {tuple(maps.shape)}")
print(f"model.logits(features): a list of {len(logits)} tensors of shape {tuple(logits[0].shape)}")
best = int(model.posterior().argmax())
accuracy = (logits[best].argmax(dim=1) == y).float().mean().item()
print(f"accuracy of copy {best} (the posterior's favourite) on this batch: {accuracy:.1%}")


# %% [markdown]
# A recurrent pre-classifier returns its output *and* its hidden state. When the pre-classifier
# returns a tuple `(x, a, b, ...)`, `x` feeds the copies and the model returns `(prediction, a, b, ...)`.
# Here a GRU reads each digit row by row; `AlraoSGD` gives each hidden unit one rate, shared by its
# three gates.

# %%
class RowReader(nn.Module):
    """Pre-classifier reading a digit's 8 rows with a GRU: returns (features, hidden state)."""

    def __init__(self, hidden_size=64):
        super().__init__()
        self.gru = nn.GRU(input_size=3 * 8, hidden_size=hidden_size)

    def forward(self, x, state=None):
        rows = F.avg_pool2d(x, 4).permute(2, 0, 1, 3).flatten(2)  # (8 rows, B, 3 * 8)
        output, state = self.gru(rows, state)
        return output[-1], state


torch.manual_seed(SEED)
reader = alrao.AlraoModel('classification', nn.NLLLoss(), RowReader(64), 6, DigitClassifier, 64, 10)
reader_optimizer = alrao.AlraoSGD(reader, min_lr=1e-5, max_lr=10.0)
train_loader.set_epoch(0)
for x, y in train_loader:
    log_probabilities, state = reader(x)  # the hidden state passes through the Alrao model
    loss = reader.loss(log_probabilities, y)
    reader_optimizer.zero_grad()
    loss.backward()
    reader_optimizer.step()
    reader.update_switch()
print(f"reader(x) returns log-probabilities {tuple(log_probabilities.shape)} and a state {tuple(state.shape)}")

gru = reader.preclassifier.gru
gru_rates = reader_optimizer.feature_lrs()[gru.weight_ih_l0].flatten()  # rows: reset, update, new gates
print(f"GRU weight_ih_l0 {tuple(gru.weight_ih_l0.shape)}: rates of shape "
      f"{tuple(reader_optimizer.feature_lrs()[gru.weight_ih_l0].shape)}; three gates, one rate per unit:",
      all(torch.equal(gate, gru_rates[:64]) for gate in gru_rates.split(64)))

# %% [markdown]
# ## 6. Regression
#
# With `task='regression'` each copy predicts the mean $\mu_j(x)$ of a Gaussian
# $\mathcal N(\mu_j(x), \sigma^2)$ (`alrao.LinearRegressor(in_features, out_features)` is a linear
# layer), and the model is their mixture $\sum_j a_j \mathcal N(\mu_j(x), \sigma^2)$, as in
# classification the average of the copies' predicted distributions. The loss is
# `alrao.GaussianNLL(variance)`, the Gaussian negative log-likelihood in nats (summed over the output
# dimensions; `None` means unit variance; `learn_variance=True` learns it): copy $j$ trains on, and the
# switch scores it by, its own; the pre-classifier trains on the mixture's, the value `model.loss`
# returns. The prediction, `model(x)`, is the mixture's mean. Below, $\sigma$ is the noise level of
# the synthetic data (when it is unknown, learn it or estimate it from the residuals of a first fit).
#
# The interval is the paper's, $[10^{-5}, 10]$. The copies with the largest rates diverge to huge
# outputs: their likelihood, computed in log space, is zero, so they send no gradient to the
# pre-classifier and get no share of the prediction, which comes from the posterior weights after
# each batch's evidence (the switch itself still moves a little mass back to every copy, in case one
# recovers).

# %%
NOISE = 0.1  # standard deviation of the targets' noise


def target_function(x):
    return torch.sin(2 * x) + 0.3 * x


generator = torch.Generator().manual_seed(SEED)
x_all = torch.rand(768, 1, generator=generator) * 4 - 2
y_all = target_function(x_all) + NOISE * torch.randn(768, 1, generator=generator)
x_train, y_train, x_test, y_test = x_all[:512], y_all[:512], x_all[512:], y_all[512:]

# %%
torch.manual_seed(SEED)
body = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
regressor = alrao.AlraoModel('regression', alrao.GaussianNLL(variance=NOISE ** 2), body,
                             6,                             # copies
                             alrao.LinearRegressor, 64, 1)  # each copy: LinearRegressor(64, 1)
regressor_optimizer = alrao.AlraoSGD(regressor, min_lr=1e-5, max_lr=10.0)

for epoch in range(REGRESSION_EPOCHS):
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(epoch))
    for batch in order.split(32):
        prediction = regressor(x_train[batch])
        loss = regressor.loss(prediction, y_train[batch])
        regressor_optimizer.zero_grad()
        loss.backward()
        regressor_optimizer.step()
        regressor.update_switch()

with torch.no_grad():
    test_nll = regressor.loss(regressor(x_test), y_test).item()
    test_mse = F.mse_loss(regressor(x_test), y_test).item()
    grid = torch.linspace(-2, 2, 200).unsqueeze(1)
    curve = regressor(grid)
best_nll = 0.5 + math.log(NOISE) + 0.5 * math.log(2 * math.pi)  # expected NLL of the true function
print(f"test NLL {test_nll:.3f} nats (the true function: {best_nll:.3f}); "
      f"test squared error {test_mse:.4f} (noise variance: {NOISE ** 2:.4f})")
copies = zip(regressor_optimizer.classifier_lrs(), regressor.posterior().tolist(),
             regressor.log_prediction_weights.exp().tolist(), regressor.last_copy_outputs.abs().amax(dim=(1, 2)))
for lr, weight, share, largest in copies:
    print(f"copy lr {lr:.1e}: posterior {weight:.3f}, share of the prediction {share:.3f}, "
          f"largest |output| {largest:.1e}")

fig, ax = plt.subplots(figsize=(8, 4))
ax.scatter(x_train.squeeze(1), y_train.squeeze(1), s=6, color='lightgray', label='training data')
ax.plot(grid.squeeze(1), target_function(grid).squeeze(1), color='black', label='sin(2x) + 0.3x')
ax.plot(grid.squeeze(1), curve.squeeze(1), color='tab:red', linestyle='--',
        label='Alrao (posterior-weighted mean)')
ax.set(xlabel='x', ylabel='y', title='Regression with Alrao-SGD')
ax.legend()
plt.show()

# %% [markdown]
# ## 7. Alrao-Adam, saving and resuming
#
# `alrao.AlraoAdam` is Adam with each feature's step scaled by its own rate instead of one global
# `lr`; it takes `betas`, `eps` and `weight_decay` as `torch.optim.Adam` does. An interval centred, in
# log scale, on Adam's default rate $10^{-3}$:

# %%
torch.manual_seed(SEED)
adam_model = alrao.AlraoModel('classification', nn.NLLLoss(), DigitFeatures(out_features=128),
                              10, DigitClassifier, 128, 10)
adam_optimizer = alrao.AlraoAdam(adam_model, min_lr=1e-5, max_lr=1e-1)
fit(adam_model, adam_optimizer, EPOCHS)
test_loss, test_accuracy, _ = evaluate(adam_model, test_loader)
print(f"Alrao-Adam [1e-5, 1e-1]: test loss {test_loss:.3f} nats, test accuracy {test_accuracy:.1%}")

# %% [markdown]
# Everything a run needs to resume is in two state dicts: the model's (the pre-classifier, the
# copies, and the switch, whose posterior and step counter are buffers) and the optimizer's (the
# feature learning rates and any momentum). A new optimizer draws new rates; `load_state_dict`
# replaces them with the saved ones. Below, the Alrao-SGD run of section 3 is saved, restored into
# models built from another seed, and both runs train one more epoch: they stay identical.

# %%
with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, 'checkpoint.pt')
    torch.save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'epoch': EPOCHS}, path)
    checkpoint = torch.load(path, map_location='cpu')  # a checkpoint written on a GPU opens anywhere

torch.manual_seed(SEED + 1)  # another seed: other weights, other feature rates...
resumed = alrao.AlraoModel('classification', nn.NLLLoss(), DigitFeatures(out_features=128),
                           10, DigitClassifier, 128, 10)
resumed_optimizer = alrao.AlraoSGD(resumed, min_lr=1e-5, max_lr=10.0)
resumed.load_state_dict(checkpoint['model'])  # ...until the checkpoint replaces them
resumed_optimizer.load_state_dict(checkpoint['optimizer'])

same_rates = all(torch.equal(saved, restored) for saved, restored in
                 zip(optimizer.feature_lrs().values(), resumed_optimizer.feature_lrs().values()))
same_switch = (torch.equal(model.posterior(), resumed.posterior())
               and torch.equal(model.switch.t, resumed.switch.t))
print(f"feature learning rates restored: {same_rates}; switch restored: {same_switch} "
      f"(step {int(resumed.switch.t)})")

continued = fit(model, optimizer, 1, first_epoch=checkpoint['epoch'])['valid_loss'][-1]
after_resume = fit(resumed, resumed_optimizer, 1, first_epoch=checkpoint['epoch'])['valid_loss'][-1]
print(f"validation loss after one more epoch: {continued:.4f} (uninterrupted), {after_resume:.4f} (resumed)")
assert same_rates and same_switch and continued == after_resume

# %% [markdown]
# ## Where next
#
# - `README.md`: the training loop in one snippet, and what the library guarantees.
# - `python main_cnn.py --help` and `python main_rnn.py --help`: the paper's CIFAR-10 and Penn Treebank
#   experiments, with Alrao or the baselines.
# - `alrao.register_feature_rule(MyLayer, rule)`: what a feature is for a layer type of your own;
#   `alrao.relative_lr(module, factor)`: a slower or frozen part of the network.
