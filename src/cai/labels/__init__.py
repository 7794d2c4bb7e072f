"""AI preference labels (RL-CAI / RLAIF): a judge model compares a prompt's candidate responses in both orders
under a comparison principle from the constitution; soft labels, a K-wise ranking and preference pairs.

Importing this package registers the "ai" labeler (`cai.scoring.register_labeler`), which `cai run
--candidates K` builds; `cai label` and `cai judge-eval` use the same judge (`cai.labels.judge`).
"""

from cai.labels.labeler import AILabeler
from cai.scoring import register_labeler

register_labeler("ai", AILabeler.for_run)

__all__ = ["AILabeler"]
