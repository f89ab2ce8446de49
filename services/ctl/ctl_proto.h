/* ctl_proto.h - any protobuf-c message as JSON, by walking its descriptor.
 *
 * Used by `sluice-ctl events` for the messages it has no hand-written
 * format for (ActiveSeqEvent, PrefillJob, ...). Field names are the .proto
 * names; 64-bit unsigned integers are strings of 16 hex digits (ids and
 * hashes; a JSON number cannot hold them), other 64-bit integers decimal
 * strings; enums their value names; bytes base64; unset oneof members and
 * unset optional sub-messages are left out; proto3 scalars always appear.
 *
 * Ownership: returns a new cJSON tree (cJSON_Delete) or NULL on ENOMEM.
 * Thread-safety: pure.
 */
#ifndef SL_CTL_PROTO_H
#define SL_CTL_PROTO_H

#include <cjson/cJSON.h>
#include <protobuf-c/protobuf-c.h>

cJSON *ctl_proto_json(const ProtobufCMessage *m);

#endif
