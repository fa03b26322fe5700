"""infra/docker-compose.yml and the config it mounts agree with each other: no Docker engine
runs here, so this is what keeps the file correct between releases."""

import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"


def test_compose_wires_floe_to_its_services():
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"minio", "postgres", "kafka", "floe"} <= set(services)
    floe = services["floe"]
    assert (INFRA / floe["build"]["dockerfile"].removeprefix("infra/")).exists()
    mounts = dict(v.split(":")[:2] for v in floe["volumes"] if v.startswith("./"))
    config_path = floe["environment"]["FLOE_CONFIG"]
    source = next(src for src, dst in mounts.items() if dst == config_path)
    config = tomllib.loads((INFRA / source).read_text())

    # The catalog URL names the postgres service with its user, password and database.
    pg = urlsplit(config["catalog"])
    env = services["postgres"]["environment"]
    assert (pg.hostname, pg.username, pg.password, pg.path.lstrip("/")) == (
        "postgres", env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"])

    # The warehouse is a bucket that minio-init creates, on the minio service, with its keys.
    bucket = urlsplit(config["warehouse"]).netloc
    assert config["warehouse"].startswith("s3://")
    assert f"local/{bucket}" in services["minio-init"]["entrypoint"]
    assert urlsplit(config["s3"]["endpoint"]).hostname == "minio"
    assert config["s3"]["path_style"] is True
    menv = services["minio"]["environment"]
    assert (config["s3"]["access_key_id"], config["s3"]["secret_access_key"]) == (
        menv["MINIO_ROOT_USER"], menv["MINIO_ROOT_PASSWORD"])

    # Kafka runs in KRaft mode (no ZooKeeper) and advertises its service name.
    kenv = services["kafka"]["environment"]
    assert "controller" in kenv["KAFKA_PROCESS_ROLES"]
    assert "kafka:9092" in kenv["KAFKA_ADVERTISED_LISTENERS"]
    assert set(floe["depends_on"]) >= {"postgres", "minio-init"}
    assert config["listen"].startswith("0.0.0.0:")


def test_prometheus_scrapes_every_floe_process_and_its_rules_hold():
    """The compose Prometheus scrapes each Floe service on the port its --metrics-listen names;
    its config and rules pass promtool, the rules' unit tests pass, and every Floe metric a
    rule uses is one Floe records."""
    import re
    import subprocess

    from test_metrics import promtool

    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    services = compose["services"]
    prometheus = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    scraped = {}
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.split(":")
                scraped[host] = int(port)
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                scraped[name] = sd["port"]
    for name in ("floe", "ingest", "compactor"):
        command = services[name]["command"]
        listen = command[command.index("--metrics-listen") + 1]
        assert scraped.get(name) == int(listen.rsplit(":", 1)[1]), (name, listen, scraped)
    mounted = [v for v in services["prometheus"]["volumes"] if v.startswith("./prometheus:")]
    assert mounted and mounted[0].split(":")[1] == "/etc/prometheus"
    assert (INFRA / "grafana" / "provisioning" / "datasources" / "prometheus.yml").exists()

    for args in (["check", "config", "prometheus.yml"], ["test", "rules", "floe_test.yml"]):
        out = subprocess.run([promtool(), *args], cwd=INFRA / "prometheus", capture_output=True, text=True)
        assert out.returncode == 0, f"promtool {' '.join(args)}: {out.stdout}{out.stderr}"

    recorded = set(re.findall(r'"(floe_[a-z_]+)"', (INFRA.parent / "catalog" / "src" / "metrics.rs").read_text()))
    rules = (INFRA / "prometheus" / "rules" / "floe.yml").read_text()
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for m in re.findall(r"\b(floe_[a-z_]+)", rules)}
    used = {m for m in used if not m.startswith("floe_test")}
    assert used and used <= recorded, used - recorded
