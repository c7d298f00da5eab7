SELECT term_months FROM bank.loans GROUP BY term_months
