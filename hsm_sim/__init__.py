"""payShield-style software HSM simulator: a pure crypto core, a command processor, a server.

Modules: :mod:`hsm_sim.tdes` (cipher primitives), :mod:`hsm_sim.lmk` (keys under the LMK),
:mod:`hsm_sim.pinblock`, :mod:`hsm_sim.dukpt`, :mod:`hsm_sim.pinverify`, :mod:`hsm_sim.cvv`,
:mod:`hsm_sim.mac`, :mod:`hsm_sim.emv` (the algorithms), :mod:`hsm_sim.issuer` and
:mod:`hsm_sim.terminal` (helpers other components call directly), :mod:`hsm_sim.core` (host
command processor), :mod:`hsm_sim.server` and :mod:`hsm_sim.cli` (the network service).
"""

from hsm_sim.lmk import Lmk, decrypt_under_lmk, encrypt_under_lmk

__all__ = ["Lmk", "decrypt_under_lmk", "encrypt_under_lmk"]
