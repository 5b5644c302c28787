// rules.h's rule-kind and epilogue lists as Python dicts name -> code, set on every
// extension module (_core, _cuda, _cuda_emu) as `rule_kinds` and `epilogues`, so
// the Python backends read the codes instead of typing them again.
#pragma once

#include <pybind11/pybind11.h>

#include "rules.h"

namespace fastlrp {
namespace binding {

inline void def_code_tables(pybind11::module_& m) {
    pybind11::dict kinds, epilogues;
    for (int k = 0; k < kRuleKindCount; ++k) kinds[kRuleKindNames[k]] = k;
    for (int e = 0; e < kEpilogueCount; ++e) epilogues[kEpilogueNames[e]] = e;
    m.attr("rule_kinds") = kinds;
    m.attr("epilogues") = epilogues;
}

}  // namespace binding
}  // namespace fastlrp
