"""``lab up`` as parse -> plan -> apply: the plan of a lab (see :mod:`.model`), compiled once from
the validated topology (:func:`compile_plan`), rendered for ``lab up --dry-run`` (:mod:`.render`)."""

from .compiler import compile_plan, lab_dir_of
from .model import (
           CHARON,
           FRR,
           GATEWAY,
           MACSEC_LINK,
           ROUTE_AGENT,
           Daemon,
           GeneratedFile,
           LabPlan,
           NodePlan,
           Tunnel,
)
from .render import plan_json, plan_text, write_file, write_files

__all__ = ["CHARON", "FRR", "GATEWAY", "MACSEC_LINK", "ROUTE_AGENT", "Daemon", "GeneratedFile", "LabPlan", "NodePlan",
           "Tunnel", "compile_plan", "lab_dir_of", "plan_json", "plan_text", "write_file", "write_files"]
