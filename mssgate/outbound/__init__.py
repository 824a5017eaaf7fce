"""Sending for the RIS (issue 15): HL7 v2 in over the API, MSSanté messages out.

- `hl7in`: parses and validates one submitted message (MDM^T02/T10, ORU^R01) into a
  `Submission`, or a `Rejection` with its HL7 error codes.
- `ack`: the HL7 ACK answered synchronously (MSA, ERR), built with python-hl7.
- `compose`: the IHE_XDM.ZIP and the signed MIME message for one recipient.
- `store`: outbound messages and their recipients in the database (idempotency per
  consumer and MSH-10, status).
- `service`: the submission end to end, handed to the spool like any accepted message.
"""
