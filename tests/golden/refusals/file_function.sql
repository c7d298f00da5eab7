SELECT COUNT(*) FROM bank.loans WHERE LENGTH(read_text('/etc/passwd')) > 0
