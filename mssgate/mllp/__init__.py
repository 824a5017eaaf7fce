"""HL7 v2 over MLLP and TLS (issue 15): a listener taking the RIS's submissions (the same as
POST /v1/outbound) from clients holding a consumer's certificate, and the push of a
consumer's queue to its RIS."""
