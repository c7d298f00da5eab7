SELECT COUNT(*) FROM bank.audit_log
