SELECT COUNT(*) FROM bank.loans WHERE term_months = 'twelve'
