"""AI preference labels (RL-CAI / RLAIF): a judge model compares a prompt's candidate responses in both orders
under a comparison principle from the constitution; soft labels, a K-wise ranking and preference pairs.

`labeler.ai` (`AILabeler.for_run`) is its `cai.plugins` entry point, which `cai run --candidates K` builds;
`cai label` and `cai judge-eval` use the same judge (`cai.labels.judge`).
"""

from cai.labels.labeler import AILabeler

__all__ = ["AILabeler"]
