"""`trainmon.torch.watch(model, optimizer)`: training health for torch loops without a framework.

Imports torch (the caller's); `import trainmon` never loads this module. The code is
agent/integrations/torch_watch.py; see docs/integrations.md.
"""

from trainmon.agent.integrations.torch_watch import Watch, watch

__all__ = ["watch", "Watch"]
