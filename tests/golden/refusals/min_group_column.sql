SELECT MIN(term_months) FROM bank.loans
