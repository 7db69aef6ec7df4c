#!/usr/bin/env bash
# Offline checks of the deployment files under deploy/:
#   - every Kubernetes manifest under deploy/kubernetes, with kubernetes-validate in
#     strict mode against pinned Kubernetes versions (kustomization.yaml files are
#     kustomize's, not Kubernetes objects: they are built with `kubectl kustomize`
#     instead, and what they render is validated too);
#   - the Kubernetes layout rules the README promises (no livenessProbe, non-root,
#     read-only root, no service links, only known ringkv.toml keys and RINGKV_* names);
#   - deploy/prometheus: `promtool check rules`, `promtool check config` (the file
#     and its commented Kubernetes example), and a `promtool test rules` run that
#     makes every alert's expression fire on bad series and stay empty on good ones;
#   - deploy/grafana/ringkv.json: valid JSON, and every panel query valid PromQL;
#   - every ringkv_*/process_* metric the alerts and the dashboard use is in the
#     documented /metrics interface.
#
# Usage: scripts/check_deploy.sh                 run all checks (installs tools if missing)
#        scripts/check_deploy.sh --list-metrics  print the metric names used by
#                                                alerts.yaml and ringkv.json, sorted,
#                                                one per line (_bucket/_sum/_count
#                                                stripped); installs nothing
# Tools: kubernetes-validate (pinned, in a venv under ~/.cache), promtool (Debian's
# prometheus package, installed with apt-get when missing), kubectl (optional: only
# for the kustomize builds), python3.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
# The oldest and the newest Kubernetes minor versions the manifests are held to.
KUBERNETES_VERSIONS=(1.30.0 1.37.0)
VENV=${RINGKV_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ringkv-deploy-venv-kv$KUBERNETES_VALIDATE_VERSION}

ALERTS=deploy/prometheus/alerts.yaml
PROMCONFIG=deploy/prometheus/prometheus.yml
DASHBOARD=deploy/grafana/ringkv.json
K8S=deploy/kubernetes

# The metric names /metrics exports (the server's interface), histograms without
# their _bucket/_sum/_count suffixes.
DOCUMENTED_METRICS="
ringkv_build_info ringkv_node_info ringkv_uptime_seconds
ringkv_requests_total ringkv_request_duration_seconds
ringkv_quorum_failures_total ringkv_forwarded_writes_total ringkv_read_repairs_total ringkv_peer_redials_total
ringkv_peer_batches_total ringkv_peer_batched_items_total ringkv_peer_single_items_total ringkv_earlier_rings
ringkv_hints_pending ringkv_hints_bytes ringkv_hints_stored_total ringkv_hints_delivered_total
ringkv_antientropy_exchanges_total ringkv_antientropy_keys_repaired_total
ringkv_antientropy_bytes_total ringkv_antientropy_last_round_age_seconds
ringkv_handoffs_in_flight ringkv_handoffs_done_total ringkv_tombstones_reaped_total ringkv_tombstones_pending
ringkv_gossip_datagrams_received_total ringkv_gossip_datagrams_sent_total
ringkv_gossip_datagrams_rejected_total ringkv_peer_handshakes_refused_total
ringkv_members ringkv_cluster_partitions ringkv_cluster_partitions_all_up
ringkv_cluster_partitions_write_quorum ringkv_cluster_partitions_read_quorum
ringkv_storage_disk_bytes ringkv_storage_live_bytes ringkv_storage_segments ringkv_storage_merges_total
ringkv_storage_damaged_values_total ringkv_storage_fsync_duration_seconds
ringkv_disk_available_bytes ringkv_disk_total_bytes
ringkv_connections ringkv_connections_refused_total ringkv_bad_frames_total
ringkv_ready ringkv_draining
ringkv_tls_cert_expiry_timestamp_seconds ringkv_tls_refused_total ringkv_client_auth_failures_total
ringkv_auth_tokens ringkv_config_reload_failures_total
process_cpu_seconds_total process_resident_memory_bytes process_open_fds process_start_time_seconds
"

# The `ringkv serve` settings (TOML keys; RINGKV_<KEY> in upper case as env).
DOCUMENTED_KEYS="
data_dir listen advertise http_listen node_id seeds zone n r w sync sync_interval_ms ring_size
cluster_secret_file accept_cluster_secret_file shutdown_delay request_timeout_ms hinted_handoff probe_ms
tls_cert tls_key tls_ca auth_file insecure storage fjall_cache_mb
anti_entropy_interval_ms anti_entropy_concurrency anti_entropy_mb_per_sec
max_connections max_in_flight max_key_bytes max_value_bytes max_object_bytes max_siblings
"

list_metrics() {
    # A metric name is a ringkv_ or process_ token not glued to a longer identifier
    # (alert names are RingkvX, label values like job="ringkv" have no underscore).
    grep -ohE '(^|[^A-Za-z0-9_])(ringkv|process)_[a-z0-9_]+' "$ALERTS" "$DASHBOARD" |
        sed -E 's/^[^a-z]//; s/_(bucket|sum|count)$//' |
        LC_ALL=C sort -u
}

if [[ ${1:-} == --list-metrics ]]; then
    list_metrics
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--list-metrics]" >&2
    exit 2
fi

START=$SECONDS
PASSED=0
FAILED=0
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# check NAME COMMAND...: runs the command, prints one line, and the command's
# output (indented) only when it fails.
check() {
    local name=$1
    shift
    local out
    if out=$("$@" 2>&1); then
        echo "ok    $name"
        PASSED=$((PASSED + 1))
    else
        echo "FAIL  $name"
        printf '%s\n' "$out" | sed 's/^/        /'
        FAILED=$((FAILED + 1))
    fi
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

# --- tools -----------------------------------------------------------------
install_kubernetes_validate() {
    local kv=$VENV/bin/kubernetes-validate
    if [[ -x $kv ]] && [[ $("$kv" --version 2>/dev/null) == "$KUBERNETES_VALIDATE_VERSION" ]]; then
        return 0
    fi
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        # Debian's python3 without the venv module.
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    [[ $("$kv" --version) == "$KUBERNETES_VALIDATE_VERSION" ]]
}

install_promtool() {
    if ! command -v promtool >/dev/null 2>&1; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        # Recommends would bring the node exporter: not needed for promtool.
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends prometheus >/dev/null
    fi
    promtool --version >/dev/null
}

check "install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION (venv $VENV)" install_kubernetes_validate
check "install promtool (Debian package prometheus)" install_promtool
KV=$VENV/bin/kubernetes-validate
PY=$VENV/bin/python
if [[ ! -x $KV ]]; then
    echo "check_deploy: $PASSED passed, $((FAILED + 1)) failed (no kubernetes-validate)"
    exit 1
fi
KV_FLAGS=(--strict --quiet)
for v in "${KUBERNETES_VERSIONS[@]}"; do KV_FLAGS+=(-k "$v"); done
K8S_VERSIONS_SHOWN=$(IFS=,; echo "${KUBERNETES_VERSIONS[*]}")

# --- Kubernetes --------------------------------------------------------------
# kubernetes-validate only warns (exit 0) on a kind it has no schema for: a
# misspelt kind or apiVersion must fail here, so any output is a failure.
kubernetes_validate() {
    local out rc=0
    out=$("$KV" "${KV_FLAGS[@]}" "$@" 2>&1) || rc=$?
    printf '%s' "$out"
    [[ $rc -eq 0 && -z $out ]]
}

mapfile -t MANIFESTS < <(find "$K8S" -name '*.yaml' ! -name kustomization.yaml | LC_ALL=C sort)
for f in "${MANIFESTS[@]}"; do
    check "kubernetes-validate --strict k8s $K8S_VERSIONS_SHOWN: $f" kubernetes_validate "$f"
done

KUSTOMIZE=()
if command -v kubectl >/dev/null 2>&1; then
    KUSTOMIZE=(kubectl kustomize)
elif command -v kustomize >/dev/null 2>&1; then
    KUSTOMIZE=(kustomize build)
fi
kustomize_and_validate() {
    local dir=$1 out=$TMP/rendered-${1//\//_}.yaml
    "${KUSTOMIZE[@]}" "$dir" >"$out"
    kubernetes_validate "$out"
}
mapfile -t KDIRS < <(find "$K8S" -name kustomization.yaml -printf '%h\n' | LC_ALL=C sort)
for d in "${KDIRS[@]}"; do
    if [[ ${#KUSTOMIZE[@]} -gt 0 ]]; then
        check "${KUSTOMIZE[*]} $d, then kubernetes-validate what it renders" kustomize_and_validate "$d"
    else
        echo "skip  kustomize build $d (neither kubectl nor kustomize is installed)"
    fi
done

layout_rules() {
    "$PY" - "$K8S" "$DOCUMENTED_KEYS" <<'EOF'
import sys, glob, yaml
try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib
root, keys = sys.argv[1], set(sys.argv[2].split())
docs = []
for path in sorted(glob.glob(root + "/**/*.yaml", recursive=True)):
    if path.endswith("kustomization.yaml"):
        continue
    docs += [(path, d) for d in yaml.safe_load_all(open(path)) if d]
errors = []
def err(path, msg):
    errors.append(f"{path}: {msg}")
def env_names(containers):
    return [e["name"] for c in containers for e in c.get("env", [])]
seen_config = False
for path, d in docs:
    kind, name = d["kind"], d["metadata"]["name"]
    if kind == "ConfigMap" and "ringkv.toml" in d.get("data", {}):
        seen_config = True
        toml = tomllib.loads(d["data"]["ringkv.toml"])
        for k in sorted(set(toml) - keys):
            err(path, f"ringkv.toml key {k!r} is not a ringkv serve setting (the server refuses it)")
        for k in ("data_dir", "listen", "http_listen", "seeds", "cluster_secret_file", "shutdown_delay"):
            if k not in toml:
                err(path, f"ringkv.toml lacks {k}")
    spec = None
    if kind == "StatefulSet":
        spec = d["spec"]["template"]["spec"]
        if d["spec"].get("podManagementPolicy") != "Parallel":
            err(path, "podManagementPolicy must be Parallel")
        if spec.get("terminationGracePeriodSeconds", 30) < 60:
            err(path, "terminationGracePeriodSeconds must be at least 60 (the drain)")
    elif kind == "Job":
        spec = d["spec"]["template"]["spec"]
    if spec is None:
        continue
    if spec.get("enableServiceLinks", True):
        err(path, f"{kind} {name}: enableServiceLinks must be false (RINGKV_* service variables are refused)")
    psc = spec.get("securityContext", {})
    for k, v in (("runAsNonRoot", True), ("runAsUser", 10001), ("runAsGroup", 10001), ("fsGroup", 10001)):
        if psc.get(k) != v:
            err(path, f"{kind} {name}: securityContext.{k} must be {v}")
    for c in spec["containers"]:
        if "livenessProbe" in c:
            err(path, f"{kind} {name}: container {c['name']} has a livenessProbe (see base/statefulset.yaml)")
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation") is not False:
            err(path, f"{kind} {name}: container {c['name']} needs readOnlyRootFilesystem and no privilege escalation")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            err(path, f"{kind} {name}: container {c['name']} must drop ALL capabilities")
    for e in env_names(spec["containers"]):
        # The client commands' own variables (a Job runs `ringkv leave`).
        if e.startswith("RINGKV_") and e[len("RINGKV_"):].lower() not in keys | {"cluster_secret", "token", "tls_cert", "tls_key"}:
            err(path, f"{kind} {name}: env {e} is not a ringkv setting (the server refuses it)")
if not seen_config:
    errors.append("no ConfigMap with ringkv.toml found")
print("\n".join(errors))
sys.exit(1 if errors else 0)
EOF
}
check "layout rules and ringkv.toml keys under $K8S" layout_rules

# --- Prometheus ----------------------------------------------------------------
check "promtool check rules $ALERTS" promtool check rules "$ALERTS"
# rule_files are resolved against the config file's directory, so this works
# from any working directory.
check "promtool check config $PROMCONFIG" promtool check config "$PROMCONFIG"

# Debian's promtool is built without some service discoveries, kubernetes_sd
# among them; then the example's relabelling is checked over a static target.
PROMTOOL_HAS_K8S_SD=true
printf 'scrape_configs:\n  - job_name: probe\n    kubernetes_sd_configs:\n      - role: pod\n' >"$TMP/probe.yml"
promtool check config "$TMP/probe.yml" >/dev/null 2>&1 || PROMTOOL_HAS_K8S_SD=false
kubernetes_sd_example() {
    # The commented `kubernetes_sd_configs` job, uncommented, in place of the
    # static one: it must be a valid configuration too.
    local cfg=$TMP/prometheus-k8s.yml
    {
        printf 'rule_files:\n  - %s\nscrape_configs:\n' "$PWD/$ALERTS"
        sed -n '/^  # - job_name: ringkv$/,$p' "$PROMCONFIG" | sed -E 's/^  # ?/  /'
    } >"$cfg"
    grep -q '^    kubernetes_sd_configs:$' "$cfg"
    grep -q '^    relabel_configs:$' "$cfg"
    if ! $PROMTOOL_HAS_K8S_SD; then
        sed -i '/^    kubernetes_sd_configs:$/,/^    relabel_configs:$/c\
    static_configs:\
      - targets: [ringkv-0.ringkv-peers:7480]\
    relabel_configs:' "$cfg"
    fi
    promtool check config "$cfg"
}
if $PROMTOOL_HAS_K8S_SD; then
    check "promtool check config: the commented Kubernetes example in $PROMCONFIG" kubernetes_sd_example
else
    check "promtool check config: the commented Kubernetes example in $PROMCONFIG (its relabelling only: this promtool has no kubernetes_sd)" kubernetes_sd_example
fi

alert_unit_tests() {
    # Every alert's expression returns one series on a bad node and nothing on a
    # healthy one (this catches label mismatches in joins and misspelt metrics,
    # which `check rules` cannot see).
    "$PY" - "$PWD/$ALERTS" "$TMP/alerts_test.yaml" <<'EOF'
import sys, yaml
alerts_path, out = sys.argv[1], sys.argv[2]
L = 'job="ringkv",instance="ringkv-1:7480"'
L2 = 'job="ringkv",instance="ringkv-2:7480"'
def series(bad):
    s = {
        f'up{{{L}}}': "0x40" if bad else "1x40",
        f'ringkv_ready{{{L}}}': "0x40" if bad else "1x40",
        f'process_start_time_seconds{{{L}}}': "100+60x40" if bad else "100x40",
        f'ringkv_quorum_failures_total{{{L}}}': "0+5x40" if bad else "7x40",
        f'ringkv_cluster_partitions{{{L}}}': "256x40",
        f'ringkv_cluster_partitions_write_quorum{{{L}}}': "200x40" if bad else "256x40",
        f'ringkv_hints_pending{{{L}}}': "5x100" if bad else "0x100",
        f'ringkv_antientropy_last_round_age_seconds{{{L}}}': "1000+60x40" if bad else "5x40",
        f'ringkv_gossip_datagrams_rejected_total{{{L},reason="auth"}}': "0+1x40" if bad else "3x40",
        f'ringkv_gossip_datagrams_rejected_total{{{L},reason="malformed"}}': "0+1x40",
        f'ringkv_disk_available_bytes{{{L}}}': "10x40" if bad else "50x40",
        f'ringkv_disk_total_bytes{{{L}}}': "100x40",
        f'ringkv_storage_damaged_values_total{{{L}}}': "0+1x40" if bad else "2x40",
        f'ringkv_build_info{{{L},version="0.1.0"}}': "1x40",
        # time() is 1800 at the 30m evaluation: "expires at 1800" is now.
        f'ringkv_tls_cert_expiry_timestamp_seconds{{{L},kind="node"}}': "1800x40" if bad else "1e10x40",
        f'ringkv_client_auth_failures_total{{{L},reason="unknown"}}': "0+10x40" if bad else "5x40",
        f'ringkv_build_info{{{L2},version="{"0.2.0" if bad else "0.1.0"}"}}': "1x40",
    }
    for le, slow in (("0.1", "0x40"), ("0.5", "0x40"), ("1", "0+60x40"), ("+Inf", "0+60x40")):
        s[f'ringkv_storage_fsync_duration_seconds_bucket{{{L},le="{le}"}}'] = (
            slow if bad else "0+60x40")
    return [{"series": k, "values": v} for k, v in s.items()]
rules = yaml.safe_load(open(alerts_path))
alerts = [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"] if "alert" in r]
# HintsBacklog needs an hour of history; the others are evaluated at 30m.
eval_at = {"RingkvHintsBacklog": "90m"}
tests = []
for bad in (True, False):
    tests.append({
        "interval": "1m",
        "name": "bad node" if bad else "healthy node",
        "input_series": series(bad),
        "promql_expr_test": [
            {"expr": f"count({expr.strip()})", "eval_time": eval_at.get(name, "30m"),
             "exp_samples": [{"labels": "{}", "value": 1}] if bad else []}
            for name, expr in alerts],
    })
yaml.safe_dump({"rule_files": [alerts_path], "evaluation_interval": "1m", "tests": tests},
               open(out, "w"), sort_keys=False)
print(f"{len(alerts)} alerts")
EOF
    promtool test rules "$TMP/alerts_test.yaml"
}
check "promtool test rules: every alert in $ALERTS fires on a bad node, not on a healthy one" alert_unit_tests

# --- Grafana -------------------------------------------------------------------
check "python3 -m json.tool $DASHBOARD" python3 -m json.tool "$DASHBOARD" /dev/null

dashboard_queries() {
    # Each panel query, with Grafana's variables replaced, as a recording rule:
    # `promtool check rules` then parses it as PromQL.
    python3 - "$DASHBOARD" "$TMP/dashboard_rules.yaml" <<'EOF'
import json, re, sys
dash = json.load(open(sys.argv[1]))
exprs = []
def walk(panels):
    for p in panels:
        for t in p.get("targets", []):
            if t.get("expr"):
                exprs.append((p["title"], t["expr"]))
        walk(p.get("panels", []))
walk(dash["panels"])
assert exprs, "no queries in the dashboard"
for p in dash["panels"]:
    ds = p.get("datasource")
    if ds and ds.get("uid") != "${DS_PROMETHEUS}":
        sys.exit(f"panel {p['title']!r}: datasource {ds} is not ${{DS_PROMETHEUS}}")
if not any(i.get("name") == "DS_PROMETHEUS" for i in dash.get("__inputs", [])):
    sys.exit("no DS_PROMETHEUS in __inputs")
subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}
with open(sys.argv[2], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (title, e) in enumerate(exprs):
        for k, v in subst.items():
            e = e.replace(k, v)
        if "$" in e:
            sys.exit(f"panel {title!r}: unknown variable in {e}")
        f.write(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(e)}\n")
print(f"{len(exprs)} queries")
EOF
    promtool check rules "$TMP/dashboard_rules.yaml"
}
check "every query in $DASHBOARD is PromQL (promtool check rules)" dashboard_queries

# --- metric names ----------------------------------------------------------------
metric_names() {
    local used unknown
    used=$(list_metrics)
    [[ -n $used ]] || { echo "no metric names found"; return 1; }
    unknown=$(comm -23 <(printf '%s\n' "$used") <(printf '%s\n' $DOCUMENTED_METRICS | LC_ALL=C sort -u))
    if [[ -n $unknown ]]; then
        echo "not in the documented /metrics interface:"
        printf '%s\n' "$unknown"
        return 1
    fi
}
check "metric names in $ALERTS and $DASHBOARD ($(list_metrics | wc -l) names) are all documented" metric_names

# --- What the manifests pass, accepted by the server itself -----------------
# `ringkv serve --check-config` parses the ConfigMap's ringkv.toml, the
# StatefulSet's args and env exactly as a pod would (pod fields filled in, the
# secret file pointed at a local one) and refuses any key, flag or RINGKV_*
# variable it does not know. BIN=path picks the binary (default: target/debug,
# then target/release; skipped when neither is built).
SERVE_BIN=${BIN:-}
if [[ -z $SERVE_BIN ]]; then
    for b in "${CARGO_TARGET_DIR:-target}"/debug/ringkv "${CARGO_TARGET_DIR:-target}"/release/ringkv; do
        [[ -x $b ]] && SERVE_BIN=$b && break
    done
fi
# Real TLS files and an auth file for the paths the manifests name: the server
# reads them at --check-config.
security_files() {
    [[ -e $TMP/pki/ca.crt ]] && return 0
    "$SERVE_BIN" certs init --dir "$TMP/pki" >/dev/null
    "$SERVE_BIN" certs node node --dir "$TMP/pki" >/dev/null
    "$SERVE_BIN" token create --role admin | sed -n 2p >"$TMP/auth"
}
serve_accepts_manifests() {
    printf 'a local secret of 32 bytes, for checks\n' >"$TMP/secret"
    chmod 600 "$TMP/secret"
    security_files
    "$PY" - "$K8S" "$TMP" <<'EOF2' >"$TMP/serve-cmd"
import sys, glob, yaml, shlex
root, tmp = sys.argv[1], sys.argv[2]
toml_text, args, env = None, None, {}
for path in sorted(glob.glob(root + "/**/*.yaml", recursive=True)):
    for d in yaml.safe_load_all(open(path)):
        if not d:
            continue
        if d.get("kind") == "ConfigMap" and "ringkv.toml" in d.get("data", {}):
            toml_text = d["data"]["ringkv.toml"]
        if d.get("kind") == "StatefulSet":
            c = d["spec"]["template"]["spec"]["containers"][0]
            args = c.get("args", [])
            for e in c.get("env", []):
                if "value" in e:
                    env[e["name"]] = e["value"]
pod = {"$(POD_NAME)": "ringkv-0", "$(POD_IP)": "10.0.0.10"}
def fill(s):
    for k, v in pod.items():
        s = s.replace(k, v)
    return s
lines = []
local = {"cluster_secret_file": tmp + "/secret", "tls_cert": tmp + "/pki/node.crt",
         "tls_key": tmp + "/pki/node.key", "tls_ca": tmp + "/pki/ca.crt",
         "auth_file": tmp + "/auth"}
for line in toml_text.splitlines():
    key = line.strip().split("=")[0].strip()
    if key in local:
        line = '%s = "%s"' % (key, local[key])
    lines.append(line)
open(tmp + "/ringkv.toml", "w").write("\n".join(lines) + "\n")
argv = [fill(a) for a in args if a != "serve"]
for i, a in enumerate(argv):
    if argv[i - 1] == "--config":
        argv[i] = tmp + "/ringkv.toml"
print(" ".join(shlex.quote(f"{k}={fill(v)}") for k, v in env.items() if k.startswith("RINGKV_")))
print(" ".join(shlex.quote(a) for a in argv))
EOF2
    local envs argv
    envs=$(sed -n 1p "$TMP/serve-cmd")
    argv=$(sed -n 2p "$TMP/serve-cmd")
    eval "env -i PATH=\"\$PATH\" $envs \"\$SERVE_BIN\" serve --check-config $argv" >"$TMP/effective.toml"
    grep -q '^advertise = "10.0.0.10:7400"$' "$TMP/effective.toml"
}
COMPOSE_FILE=deploy/compose/docker-compose.yml
serve_accepts_compose() {
    printf 'a local secret of 32 bytes, for checks\n' >"$TMP/secret"
    chmod 600 "$TMP/secret"
    security_files
    "$PY" - "$COMPOSE_FILE" "$TMP" <<'EOF2' >"$TMP/compose-envs"
import sys, yaml, shlex
path, tmp = sys.argv[1], sys.argv[2]
doc = yaml.safe_load(open(path))
for name, svc in sorted(doc["services"].items()):
    if not name.startswith("ringkv-"):
        continue
    env = dict(svc.get("environment") or {})
    local = {"RINGKV_CLUSTER_SECRET_FILE": tmp + "/secret", "RINGKV_TLS_CERT": tmp + "/pki/node.crt",
             "RINGKV_TLS_KEY": tmp + "/pki/node.key", "RINGKV_TLS_CA": tmp + "/pki/ca.crt",
             "RINGKV_AUTH_FILE": tmp + "/auth"}
    for k, v in local.items():
        if k in env:
            env[k] = v
    print(" ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items())))
EOF2
    local n=0 envs
    while IFS= read -r envs; do
        n=$((n + 1))
        eval "env -i PATH=\"\$PATH\" $envs \"\$SERVE_BIN\" serve --check-config" >"$TMP/compose-effective.toml"
        grep -q '^advertise = "ringkv-' "$TMP/compose-effective.toml"
    done <"$TMP/compose-envs"
    [[ $n -eq 3 ]]
}
if [[ -n $SERVE_BIN ]]; then
    check "ringkv serve --check-config accepts the ConfigMap, args and env of $K8S" serve_accepts_manifests
    check "ringkv serve --check-config accepts the environment of every node in $COMPOSE_FILE" serve_accepts_compose
else
    echo "skip  ringkv serve --check-config on the manifests (no ringkv binary built; BIN=path)"
fi

echo "check_deploy: $PASSED passed, $FAILED failed ($((SECONDS - START)) s)"
[[ $FAILED -eq 0 ]]
