"""Patients' mailboxes (Mon espace santé, `<INS>@patient.mssante.fr`): who may write to a
patient, and when a patient's reply is accepted (docs/security-model.md, "Patient
mailboxes")."""
