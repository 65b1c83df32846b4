"""`trainmon simulate`: a synthetic GPU cluster running training jobs, for demos, alert-rule checks
and load generation. See docs/simulate.md.

- config.py: what to simulate (SimConfig, FaultSpec)
- curves.py: training curves (loss, validation, accuracy, learning rate) and the noise table
- hardware.py: host and GPU figures
- cluster.py: nodes, GPUs, runs and ranks, and the contract events they send
- faults.py: the named fault scenarios (FAULTS)
- hazards.py: the named hazards that must not page (HAZARDS): pauses, spikes, noise, resumes, delivery
- runner.py: the schedule, the pure event generator and the real-time, published Simulation
"""

from trainmon.agent.simulator.config import FaultSpec, SimConfig, SimulateError
from trainmon.agent.simulator.faults import FAULTS, describe_faults
from trainmon.agent.simulator.hazards import HAZARDS, describe_hazards
from trainmon.agent.simulator.runner import Simulation, Tally, generate, published

__all__ = ["FAULTS", "HAZARDS", "FaultSpec", "SimConfig", "SimulateError", "Simulation", "Tally", "describe_faults",
           "describe_hazards", "generate", "published"]
