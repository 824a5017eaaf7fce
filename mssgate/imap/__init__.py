"""The IMAP front door: TLS and the pre-authentication phase here, mailboxes in Dovecot."""
