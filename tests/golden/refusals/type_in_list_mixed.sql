SELECT COUNT(*) FROM bank.loans WHERE term_months IN (12, 'x')
