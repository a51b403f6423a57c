#!/usr/bin/env python3
"""A Python grpcio client of ewtuned that needs none of ewtune's .proto files: it learns the
messages from the daemon's server reflection, then registers a dataset, plans and submits a DP
fine-tuning job with canaries, watches it to the end, prints the signed budget report, and audits
the trained model (the one-run epsilon lower bound on the canaries, beside the certified epsilon).

Usage: EWTUNE_TOKEN=... python examples/python_client.py ADDR DATASET.jsonl MODEL_NAME
Needs: grpcio, grpcio-reflection, protobuf (pip install -r examples/requirements.txt).
"""
import json
import os
import sys
import time

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def main():
    addr, data_path, model = sys.argv[1], sys.argv[2], sys.argv[3]
    token = os.environ["EWTUNE_TOKEN"]
    channel = grpc.insecure_channel(addr.removeprefix("http://"))
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))

    def msg(name):
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"ewtune.v1.{name}"))

    def unary(service, method, request_type, response_type):
        return channel.unary_unary(f"/ewtune.v1.{service}/{method}", request_serializer=msg(request_type).SerializeToString,
                                   response_deserializer=msg(response_type).FromString)

    auth = [("authorization", f"Bearer {token}")]
    register = unary("Datasets", "Register", "RegisterDatasetRequest", "Dataset")
    with open(data_path, "rb") as fh:
        ds = register(msg("RegisterDatasetRequest")(name="python-notes", content=fh.read(), budget_epsilon=8.0, budget_delta=1e-5),
                      metadata=auth)
    print(f"dataset {ds.dataset_id}: {ds.units} privacy units")

    spec = msg("JobSpec")(dataset_id=ds.dataset_id, base_model=model, target_epsilon=2.0, batch_size=40, steps=6,
                          micro_batch=20, learning_rate=1e-2, max_length=40, lora=msg("LoraConfig")(rank=4, alpha=8.0),
                          canaries=msg("CanaryConfig")(count=200, length=16))
    plan = unary("Jobs", "Plan", "JobSpec", "PlanResponse")(spec, metadata=auth)
    print(f"plan: sigma {plan.noise_multiplier:.4f}, certified epsilon {plan.certified_epsilon:.4f} "
          f"(Edgeworth estimate {plan.edgeworth_epsilon:.4f}), {plan.remaining_epsilon_before:.4f} left before")
    for warning in plan.warnings:
        print(f"plan warning: {warning}")
    job = unary("Jobs", "Create", "JobSpec", "Job")(spec, metadata=auth)
    print(f"job {job.job_id} queued; canary manifest committed as sha256 {job.canary_manifest_sha256}")

    watch = channel.unary_stream("/ewtune.v1.Jobs/Watch", request_serializer=msg("WatchJobRequest").SerializeToString,
                                 response_deserializer=msg("JobEvent").FromString)
    for event in watch(msg("WatchJobRequest")(job_id=job.job_id), metadata=auth):
        print(f"  {event.kind} {event.payload_json}")

    done = unary("Jobs", "Get", "GetJobRequest", "Job")(msg("GetJobRequest")(job_id=job.job_id), metadata=auth)
    states = {1: "queued", 2: "running", 3: "succeeded", 4: "failed", 5: "cancelled"}
    print(f"job {states.get(done.state)}: {done.steps_done}/{done.steps_planned} steps, certified epsilon {done.epsilon_spent:.4f}")

    # An overspending job is refused with FAILED_PRECONDITION.
    try:
        unary("Jobs", "Create", "JobSpec", "Job")(msg("JobSpec")(dataset_id=ds.dataset_id, base_model=model, target_epsilon=7.9,
                                                               batch_size=40, steps=6), metadata=auth)
        raise SystemExit("an overspending job was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
        print(f"overspend refused: {e.details()}")

    report = unary("Budget", "Get", "GetBudgetRequest", "BudgetReport")(msg("GetBudgetRequest")(dataset_id=ds.dataset_id),
                                                                       metadata=auth)
    print("budget report (signed by the daemon):")
    print(json.dumps(json.loads(report.report_json), indent=2))
    if done.state != 3:
        raise SystemExit("the job did not succeed")

    # The membership audit of the trained model: canaries inserted with probability 1/2.
    audit = unary("Audits", "Create", "CreateAuditRequest", "Audit")(msg("CreateAuditRequest")(job_id=job.job_id), metadata=auth)
    get_audit = unary("Audits", "Get", "GetAuditRequest", "Audit")
    while audit.state == 1:  # AUDIT_STATE_RUNNING
        time.sleep(0.2)
        audit = get_audit(msg("GetAuditRequest")(audit_id=audit.audit_id), metadata=auth)
    if audit.state != 2:
        raise SystemExit(f"the audit failed: {audit.reason}")
    print(f"audit {audit.audit_id}: canary AUC {audit.canary_auc:.4f}, empirical epsilon lower bound "
          f"{audit.epsilon_lower_bound:.4f} <= certified {audit.certified_epsilon:.4f}; violation: {audit.violation}")
    if audit.violation or audit.epsilon_lower_bound > audit.certified_epsilon:
        raise SystemExit("the audit refutes the certified epsilon")


if __name__ == "__main__":
    main()
