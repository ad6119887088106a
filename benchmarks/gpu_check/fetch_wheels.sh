#!/usr/bin/env bash
# Fill .whl/ (ignored by git) with the Python 3.12 x86-64 wheels that the GPU machine's image lacks, for
# `benchmarks/gpu_check/device_run.sh`, within the 64 MiB that one device call carries.
#
#   benchmarks/gpu_check/fetch_wheels.sh          # from the repository root, where pip can reach PyPI
#
# The image has torch 2.11, transformers 5.17, peft, accelerate, pyarrow, triton, ... (see the device
# notes), and not these. Groups, in order; a group goes in only if it fits beside the working tree,
# the tokenizer (.assets/tokenizers/smollm2, carried too) and the groups before it:
#   trainer  the trainer check and the benchmark of ours: datasets and what it needs beyond the image
#   peers    the benchmark's TRL 1.9 and TRL + Liger-Kernel peers
#   qlora    the trainer check's QLoRA: bitsandbytes
# (Axolotl does not travel: with what `axolotl train` imports beyond the image, wandb 19 MiB among them,
# and bitsandbytes, which it imports at start-up, it is over 80 MiB; tests/ runs `axolotl train` on CPU.)
# A group that does not fit is left out and its reason written to .whl/SKIPPED.json (module -> reason),
# which the checks quote when they skip the part; .whl/MANIFEST.json lists what went in, with sizes.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PYTHON=${PYTHON:-python3}
LIMIT_MIB=${LIMIT_MIB:-64}
exclude="$(git rev-parse --git-common-dir)/info/exclude"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
grep -qxF '/.whl-cache/' "$exclude" 2>/dev/null || echo '/.whl-cache/' >>"$exclude"

declare -A GROUP=(
  [trainer]="datasets==4.8.4 dill==0.4.1 multiprocess==0.70.19"
  [peers]="trl==1.9.0 liger-kernel==0.8.1"
  [qlora]="bitsandbytes==0.50.2"
)
ORDER="trainer peers qlora"
PLATFORMS=""
for n in 28 27 24 17 5 31 34 35; do PLATFORMS+=" --platform manylinux_2_${n}_x86_64"; done
PLATFORMS+=" --platform manylinux2014_x86_64 --platform manylinux1_x86_64"

for group in $ORDER; do
  [ -n "${SKIP_DOWNLOAD:-}" ] && break
  dir=".whl-cache/$group"
  mkdir -p "$dir"
  # shellcheck disable=SC2086
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $PLATFORMS -d "$dir" ${GROUP[$group]}
done

"$PYTHON" - "$LIMIT_MIB" "$ORDER" <<'PY'
"""Choose the groups that fit, copy them into .whl/, write MANIFEST.json and SKIPPED.json."""
import json, shutil, subprocess, sys
from pathlib import Path

limit, order = float(sys.argv[1]) * 2**20, sys.argv[2].split()
MODULES = {"trainer": ["datasets"], "peers": ["trl", "liger_kernel"], "qlora": ["bitsandbytes"]}
NEEDS = {"peers": ["trainer"]}  # TRL needs datasets
tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True,
                         check=True).stdout.split(b"\0")
tree = sum(Path(p.decode()).stat().st_size for p in tracked if p and Path(p.decode()).is_file())
tokenizer = sum(p.stat().st_size for p in Path(".assets/tokenizers/smollm2").glob("*"))
sizes = {g: {w.name: w.stat().st_size for w in sorted(Path(".whl-cache", g).glob("*.whl"))} for g in order}
mib = lambda b: f"{b / 2**20:.1f} MiB"
used, chosen, skipped = tree + tokenizer, [], {}
for group in order:
    extra = sum(sum(sizes[g].values()) for g in [group, *NEEDS.get(group, [])] if g not in chosen)
    if used + extra <= limit:
        chosen += [g for g in NEEDS.get(group, []) if g not in chosen] + [group]
        used += extra
        continue
    own, deps = sum(sizes[group].values()), sum(sum(sizes[g].values()) for g in NEEDS.get(group, []))
    biggest = ", ".join(f"{n.split('-')[0]} {mib(s)}" for s, n in sorted(((s, n) for n, s in sizes[group].items()),
                                                                         reverse=True)[:2])
    alone = tree + tokenizer + own + deps
    reason = (f"not carried to the GPU machine: its wheels take {mib(own)} (largest: {biggest})"
              + (f", and it needs the {', '.join(NEEDS[group])} wheels too ({mib(deps)})" if group in NEEDS else "")
              + f"; with the working tree ({mib(tree)}) and the tokenizer ({mib(tokenizer)}) that is {mib(alone)}"
              + (" even without the other groups" if alone > limit else
                 f", {mib(used + extra)} with the groups already chosen")
              + f", over the {mib(limit)} that one device call carries")
    skipped.update({m: f"`{m}` {reason}" for m in MODULES[group]})
shutil.rmtree(".whl", ignore_errors=True)
Path(".whl").mkdir()
for group in chosen:
    for name in sizes[group]:
        shutil.copy(Path(".whl-cache", group, name), ".whl")
manifest = {"limit_mib": limit / 2**20, "tree_bytes": tree, "tokenizer_bytes": tokenizer, "carried_bytes": used,
            "groups": {g: {"carried": g in chosen, "bytes": sum(sizes[g].values()), "wheels": sizes[g]} for g in order}}
Path(".whl/MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
Path(".whl/SKIPPED.json").write_text(json.dumps(skipped, indent=1) + "\n")
for g in order:
    print(f"{g:8s} {mib(sum(sizes[g].values())):>9s}  {'carried' if g in chosen else 'NOT carried'}")
print(f"working tree {mib(tree)}, tokenizer {mib(tokenizer)}, all carried {mib(used)} of {mib(limit)}")
for module, reason in skipped.items():
    print(f"skipped {module}: {reason}")
PY
