SELECT COUNT(*) FROM bank.loans WHERE term_months * 2 > 30
