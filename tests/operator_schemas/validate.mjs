// Validates ServiceMonitor and PrometheusRule objects (a JSON array on stdin) against
// the prometheus-operator v1 CRD schemas, as compiled by @kubernetes-models.
// Prints "ok KIND NAME" per object; exits 1 with the schema errors on the first bad one.
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const models = { ServiceMonitor, PrometheusRule };
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const docs = JSON.parse(Buffer.concat(chunks).toString("utf8"));
for (const doc of docs) {
  const Model = models[doc.kind];
  if (!Model) {
    console.error(`no schema for kind ${doc.kind}`);
    process.exit(2);
  }
  try {
    new Model(doc).validate();
  } catch (err) {
    console.error(`${doc.kind} ${doc.metadata?.name}: ${err.message}`);
    process.exit(1);
  }
  console.log(`ok ${doc.kind} ${doc.metadata?.name}`);
}
