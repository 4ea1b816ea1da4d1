"""Entry point `pulumi up` runs (Pulumi.yaml: `main: infra/`)."""

import sys
from pathlib import Path

# Pulumi runs this file with infra/ on sys.path; the program's packages
# (infra, components) live one level up, beside Pulumi.yaml.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.program import main

main()
