# bench.batch_profile with Hydra and Chimera drafting row by row, as the loop did before HydraSlots/ChimeraSlots:
# one one-request proposer per slot, called in turn (the default SlotProposers, EachSlot). Same flags as the tool.
import sys

from fastchat_spec.bench.batch_profile import main
from fastchat_spec.generate.proposers.base import Proposer
from fastchat_spec.generate.proposers.chimera import ChimeraProposer
from fastchat_spec.generate.proposers.hydra import HydraProposer

HydraProposer.for_slots = classmethod(Proposer.for_slots.__func__)
ChimeraProposer.for_slots = classmethod(Proposer.for_slots.__func__)
main(sys.argv[1:])
