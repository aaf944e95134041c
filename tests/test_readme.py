"""The README's code is executed, so it cannot drift from the library."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section):
    text = README.read_text()
    part = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", part, flags=re.S)


def test_training_loop_snippet_runs(capsys):
    blocks = python_blocks("Alrao in your own training loop")
    assert len(blocks) == 2  # the training loop, then the same loop with autocast and a GradScaler
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    model, optimizer = namespace["model"], namespace["optimizer"]
    assert abs(float(model.posterior().sum()) - 1) < 1e-5
    assert len(optimizer.classifier_lrs()) == 10
    assert "tensor" in capsys.readouterr().out
