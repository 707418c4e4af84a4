# shellcheck shell=bash
#
# Cronium runtime helpers for bash scripts. The local executor sources this file before the
# script, so the functions are simply there:
#
#     data=$(cronium_input)                          # {"rows":[1,2,3]}
#     cronium_output "$(jq -c '{count: (.rows | length)}' <<<"$data")"
#     cronium_set_condition true
#     cronium_event_field .execution.attempt         # 1
#
# Elsewhere: `. /path/to/cronium.sh`. Needs curl and jq.
#
# Contract:
# - Sourcing defines functions and nothing else: no shell option is changed, nothing is
#   printed, no variable is set. Names: cronium_*, their camelCase aliases (croniumInput, ...)
#   and _cronium_* (internal). The functions work under `set -euo pipefail`.
# - CRONIUM_RUNTIME_API, CRONIUM_EXECUTION_TOKEN and CRONIUM_EXECUTION_ID are read at each call.
# - Results (compact JSON, or raw text for cronium_event_field strings) go to stdout, one line;
#   errors go to stderr as "cronium: <function>: <message>", with these exit statuses:
#       1  "no": only cronium_variable_exists (the variable is missing or null)
#       2  bad arguments, bad JSON, or the environment is not a Cronium job's (or no curl/jq)
#       3  the runtime API answered with an error (4xx; 5xx after the retries)
#       4  the runtime API could not be reached (after the retries)
#       5  the runtime API did not answer in time (after the retries)
# - Each request makes up to CRONIUM_SDK_ATTEMPTS tries (4): connection errors, timeouts and 5xx
#   answers are retried after CRONIUM_SDK_BACKOFF seconds (0.25), doubling up to 5 s, with
#   jitter; a 4xx answer is final. A tool action is retried only when it cannot have been
#   delivered (connection refused, 503). Each try is bounded by CRONIUM_SDK_TIMEOUT seconds (30).
#   Set these three as shell variables in the script: an event's env may not hold CRONIUM_ names.
#   curl's own --retry is not used: it also retries 408 and 429, and a tool action's 500.
# - The token goes to curl on its standard input as a config line (`curl -K -`), never on a
#   command line (which `ps` shows to everyone), and never into a message. curl is run without
#   ~/.curlrc (-q), without proxies (a proxy would see the token) and without following
#   redirects.

# -- internals --------------------------------------------------------------------------------

# _cronium_check_json NAME TEXT: TEXT is exactly one JSON value; sets NAME to its compact form
_cronium_check_json() {
    local _cj_value _cj_rc=0
    _cj_value=$(command jq -cs 'if length == 1 then .[0] else error("not one value") end' \
        2>/dev/null <<<"$2") || _cj_rc=$?
    if ((_cj_rc != 0)); then
        return 1
    fi
    printf -v "$1" '%s' "$_cj_value"
}

# _cronium_urlencode NAME TEXT: sets NAME to TEXT percent-encoded as one path segment
_cronium_urlencode() {
    local LC_ALL=C _ue_text=$2 _ue_out='' _ue_char _ue_i
    for ((_ue_i = 0; _ue_i < ${#_ue_text}; _ue_i++)); do
        _ue_char=${_ue_text:_ue_i:1}
        case $_ue_char in
            [A-Za-z0-9._~-]) _ue_out+=$_ue_char ;;
            *) printf -v _ue_char '%%%02X' "'$_ue_char"; _ue_out+=$_ue_char ;;
        esac
    done
    printf -v "$1" '%s' "$_ue_out"
}

# _cronium_ms NAME SECONDS: sets NAME to SECONDS (like 0.25) in whole milliseconds
_cronium_ms() {
    local _ms_s=$2 _ms_int _ms_frac=''
    [[ $_ms_s =~ ^[0-9]+(\.[0-9]*)?$ ]] || return 1
    _ms_int=${_ms_s%%.*}
    [[ $_ms_s == *.* ]] && _ms_frac=${_ms_s#*.}
    _ms_frac="${_ms_frac}000"
    printf -v "$1" '%d' "$((10#$_ms_int * 1000 + 10#${_ms_frac:0:3}))"
}

# _cronium_call METHOD PATH [BODY [ONCE]]: one call of the runtime API, with the retries.
# Sets the caller's _c_status (HTTP status, 0 without an answer), _c_data (the compact JSON of
# the answer's `data`) and _c_error (a message); returns 0, or 2-5 as in the header above.
# BODY is compact JSON (jq's). ONCE=1: the request must not be repeated once it may have been
# delivered (a tool action).
_cronium_call() {
    local method=$1 path=$2 body=${3-} once=${4-}
    local base=${CRONIUM_RUNTIME_API-} token=${CRONIUM_EXECUTION_TOKEN-}
    local attempts=${CRONIUM_SDK_ATTEMPTS-4} timeout=${CRONIUM_SDK_TIMEOUT-30}
    local backoff_ms config escaped answer answer_body rc try delay_ms sleep_ms retry
    _c_status=0 _c_data='' _c_error=''
    if [[ -z $base ]]; then
        _c_error='CRONIUM_RUNTIME_API is not set: is this script running as a Cronium job?'
        return 2
    fi
    if [[ -z $token ]]; then
        _c_error='CRONIUM_EXECUTION_TOKEN is not set: is this script running as a Cronium job?'
        return 2
    fi
    # only what a JWT is made of: safe inside a quoted curl config string
    if ! [[ $token =~ ^[A-Za-z0-9._~+/=-]+$ ]]; then
        _c_error='CRONIUM_EXECUTION_TOKEN is malformed'
        return 2
    fi
    base=${base%/}
    if [[ $base != http://?* && $base != https://?* ]]; then
        _c_error="CRONIUM_RUNTIME_API is not an http(s) URL: $base"
        return 2
    fi
    if ! [[ $attempts =~ ^[1-9][0-9]*$ ]] || ! _cronium_ms backoff_ms "${CRONIUM_SDK_BACKOFF-0.25}" \
        || ! [[ $timeout =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
        _c_error='CRONIUM_SDK_ATTEMPTS must be a whole number, CRONIUM_SDK_BACKOFF and CRONIUM_SDK_TIMEOUT numbers of seconds'
        return 2
    fi
    if ! command -v curl >/dev/null 2>&1 || ! command -v jq >/dev/null 2>&1; then
        _c_error='the Cronium bash helpers need curl and jq'
        return 2
    fi
    config="header = \"Authorization: Bearer $token\""
    if [[ -n $body ]]; then
        # curl config strings take \\ and \"; jq's compact JSON holds no raw control character
        escaped=${body//\\/\\\\}
        escaped=${escaped//\"/\\\"}
        config+=$'\n'"header = \"Content-Type: application/json\""$'\n'"data-raw = \"$escaped\""
    fi
    for ((try = 1; try <= attempts; try++)); do
        if ((try > 1)); then
            delay_ms=$((backoff_ms << (try - 2)))
            ((delay_ms > 5000)) && delay_ms=5000
            sleep_ms=$((delay_ms / 2 + RANDOM % (delay_ms / 2 + 1)))
            command sleep "$((sleep_ms / 1000)).$(printf '%03d' "$((sleep_ms % 1000))")"
        fi
        rc=0
        answer=$(command curl -q --silent --noproxy '*' --proto '=http,https' --max-redirs 0 \
            --max-time "$timeout" --request "$method" --header 'Accept: application/json' \
            --user-agent cronium-bash-sdk --write-out '\n%{http_code}' --config - \
            -- "$base$path" <<<"$config") || rc=$?
        retry=''
        if ((rc == 0)); then
            _c_status=${answer##*$'\n'}
            answer_body=${answer%$'\n'*}
            if [[ $_c_status == 2[0-9][0-9] ]] && _c_data=$(command jq -c \
                'if type == "object" and .success == true then .data else error("") end' \
                2>/dev/null <<<"$answer_body") && [[ -n $_c_data ]]; then
                return 0
            fi
            _c_data=''
            _c_error=$(command jq -r 'if type == "object" then
                    [(.error | strings), (.message | select(. != null) | tostring)]
                    | if length == 2 and .[0] == .[1] then .[0] else join(": ") end
                else empty end' 2>/dev/null <<<"$answer_body") || _c_error=''
            _c_error="HTTP $_c_status${_c_error:+ $_c_error}"
            if ((_c_status >= 500)) && [[ -z $once || $_c_status == 503 ]]; then
                retry=3
            else
                _c_error=${_c_error//"$token"/[token]}
                return 3
            fi
        else
            _c_status=0
            case $rc in
                28)
                    _c_error="the Cronium runtime API at $base did not answer within $timeout s ($try tries)"
                    [[ -z $once ]] && retry=5
                    ;;
                7)  # could not connect: nothing was delivered, so even a tool action may go again
                    _c_error="cannot reach the Cronium runtime API at $base ($try tries): curl error 7 (could not connect)"
                    retry=4
                    ;;
                5 | 6 | 16 | 18 | 35 | 52 | 55 | 56 | 92)
                    _c_error="cannot reach the Cronium runtime API at $base ($try tries): curl error $rc"
                    [[ -z $once ]] && retry=4
                    ;;
                *)
                    _c_error="cannot call the Cronium runtime API at $base: curl error $rc"
                    return 4
                    ;;
            esac
            if [[ -z $retry ]]; then
                ((rc == 28)) && return 5
                return 4
            fi
        fi
        if ((try == attempts)); then
            _c_error=${_c_error//"$token"/[token]}
            return "$retry"
        fi
    done
}

# _cronium_exec METHOD SUFFIX [BODY [ONCE]]: _cronium_call on /executions/<this id>/SUFFIX
_cronium_exec() {
    local id
    if [[ -z ${CRONIUM_EXECUTION_ID-} ]]; then
        _c_status=0 _c_data='' _c_error='CRONIUM_EXECUTION_ID is not set: is this script running as a Cronium job?'
        return 2
    fi
    _cronium_urlencode id "$CRONIUM_EXECUTION_ID"
    _cronium_call "$1" "/executions/$id/$2" "${@:3}"
}

# _cronium_variable KEY: GET the variable; _c_data is its value, "null" when it is missing
_cronium_variable() {
    local key rc=0
    _cronium_urlencode key "$1"
    _cronium_exec GET "variables/$key" || rc=$?
    if ((rc == 3)) && [[ $_c_status == 404 ]]; then
        _c_data=null
        return 0
    fi
    ((rc == 0)) || return "$rc"
    _c_data=$(command jq -c 'if type == "object" and has("value") then .value else . end' <<<"$_c_data")
}

# _cronium_fail FUNCTION STATUS [MESSAGE]: report an error, return STATUS
_cronium_fail() {
    printf 'cronium: %s: %s\n' "$1" "${3:-$_c_error}" >&2
    return "$2"
}

# _cronium_usage FUNCTION USAGE: a bad call
_cronium_usage() {
    printf 'cronium: usage: %s\n' "$2" >&2
    return 2
}

# -- the helpers ------------------------------------------------------------------------------

# cronium_input: print this execution's input as JSON ({} when none)
cronium_input() {
    local _c_status _c_data _c_error _c_rc=0
    (($# == 0)) || { _cronium_usage cronium_input 'cronium_input'; return; }
    _cronium_exec GET input || _c_rc=$?
    ((_c_rc == 0)) || { _cronium_fail cronium_input "$_c_rc"; return; }
    printf '%s\n' "$_c_data"
}

# cronium_output [JSON]: set this execution's output (the last call wins); no argument: read
# the JSON from stdin
cronium_output() {
    local _c_status _c_data _c_error _c_rc=0 value
    (($# <= 1)) || { _cronium_usage cronium_output 'cronium_output [JSON]  (or JSON on stdin)'; return; }
    if (($# == 0)); then
        value=$(command cat) || { _cronium_fail cronium_output 2 'cannot read stdin'; return; }
    else
        value=$1
    fi
    _cronium_check_json value "$value" || { _cronium_fail cronium_output 2 'not one JSON value (a string needs quotes: "\"text\"")'; return; }
    _cronium_exec POST output "{\"data\":$value}" || _c_rc=$?
    ((_c_rc == 0)) || _cronium_fail cronium_output "$_c_rc"
}

# cronium_get_variable KEY: print the variable's JSON value, null when there is none
cronium_get_variable() {
    local _c_status _c_data _c_error _c_rc=0
    [[ $# -eq 1 && -n ${1-} ]] || { _cronium_usage cronium_get_variable 'cronium_get_variable KEY'; return; }
    _cronium_variable "$1" || _c_rc=$?
    ((_c_rc == 0)) || { _cronium_fail cronium_get_variable "$_c_rc"; return; }
    printf '%s\n' "$_c_data"
}

# cronium_set_variable KEY JSON: set a variable to a JSON value
cronium_set_variable() {
    local _c_status _c_data _c_error _c_rc=0 key value
    [[ $# -eq 2 && -n ${1-} ]] || { _cronium_usage cronium_set_variable 'cronium_set_variable KEY JSON'; return; }
    _cronium_check_json value "$2" || { _cronium_fail cronium_set_variable 2 'the value is not one JSON value (a string needs quotes: "\"text\"")'; return; }
    _cronium_urlencode key "$1"
    _cronium_exec PUT "variables/$key" "{\"value\":$value}" || _c_rc=$?
    ((_c_rc == 0)) || _cronium_fail cronium_set_variable "$_c_rc"
}

# cronium_variable_exists KEY: exit status 0 when the variable exists and is not null, 1 when
# not (a deleted variable is null); 2-5 on errors
cronium_variable_exists() {
    local _c_status _c_data _c_error _c_rc=0
    [[ $# -eq 1 && -n ${1-} ]] || { _cronium_usage cronium_variable_exists 'cronium_variable_exists KEY'; return; }
    _cronium_variable "$1" || _c_rc=$?
    ((_c_rc == 0)) || { _cronium_fail cronium_variable_exists "$_c_rc"; return; }
    [[ $_c_data != null ]]
}

# cronium_delete_variable KEY: the runtime API has no DELETE: sets the variable to null, which
# every helper reads as missing (cronium_get_variable prints null, cronium_variable_exists
# says no)
cronium_delete_variable() {
    local _c_status _c_data _c_error _c_rc=0 key
    [[ $# -eq 1 && -n ${1-} ]] || { _cronium_usage cronium_delete_variable 'cronium_delete_variable KEY'; return; }
    _cronium_urlencode key "$1"
    _cronium_exec PUT "variables/$key" '{"value":null}' || _c_rc=$?
    ((_c_rc == 0)) || _cronium_fail cronium_delete_variable "$_c_rc"
}

# cronium_increment_variable KEY [BY]: add BY (default 1, may be negative or fractional) to a
# number variable (missing or null counts as 0) and print the new value. Read, then write: not
# atomic against another job changing the same variable at the same time.
cronium_increment_variable() {
    local _c_status _c_data _c_error _c_rc=0 key by=${2-1} value
    [[ ($# -eq 1 || $# -eq 2) && -n ${1-} ]] || { _cronium_usage cronium_increment_variable 'cronium_increment_variable KEY [BY]'; return; }
    if ! _cronium_check_json by "$by" || ! command jq -e 'type == "number"' >/dev/null <<<"$by"; then
        _cronium_fail cronium_increment_variable 2 "BY is not a number: $by"
        return
    fi
    _cronium_variable "$1" || _c_rc=$?
    ((_c_rc == 0)) || { _cronium_fail cronium_increment_variable "$_c_rc"; return; }
    value=$(command jq -c --argjson by "$by" \
        'if . == null then $by elif type == "number" then . + $by else error("") end' \
        2>/dev/null <<<"$_c_data") || { _cronium_fail cronium_increment_variable 2 "$1 is not a number: $_c_data"; return; }
    _cronium_urlencode key "$1"
    _cronium_exec PUT "variables/$key" "{\"value\":$value}" || _c_rc=$?
    ((_c_rc == 0)) || { _cronium_fail cronium_increment_variable "$_c_rc"; return; }
    printf '%s\n' "$value"
}

# cronium_append_variable KEY JSON: append a JSON value to an array variable (missing or null
# counts as []). Read, then write: not atomic, as cronium_increment_variable.
cronium_append_variable() {
    local _c_status _c_data _c_error _c_rc=0 key item value
    [[ $# -eq 2 && -n ${1-} ]] || { _cronium_usage cronium_append_variable 'cronium_append_variable KEY JSON'; return; }
    _cronium_check_json item "$2" || { _cronium_fail cronium_append_variable 2 'the value is not one JSON value (a string needs quotes: "\"text\"")'; return; }
    _cronium_variable "$1" || _c_rc=$?
    ((_c_rc == 0)) || { _cronium_fail cronium_append_variable "$_c_rc"; return; }
    value=$(command jq -c --argjson item "$item" \
        'if . == null then [$item] elif type == "array" then . + [$item] else error("") end' \
        2>/dev/null <<<"$_c_data") || { _cronium_fail cronium_append_variable 2 "$1 is not an array: $_c_data"; return; }
    _cronium_urlencode key "$1"
    _cronium_exec PUT "variables/$key" "{\"value\":$value}" || _c_rc=$?
    ((_c_rc == 0)) || _cronium_fail cronium_append_variable "$_c_rc"
}

# cronium_set_condition true|false: set the condition that a workflow's ON_CONDITION edges test
cronium_set_condition() {
    local _c_status _c_data _c_error _c_rc=0 value
    case ${1-} in
        true | 1) value=true ;;
        false | 0) value=false ;;
        *) _cronium_usage cronium_set_condition 'cronium_set_condition true|false'; return ;;
    esac
    (($# == 1)) || { _cronium_usage cronium_set_condition 'cronium_set_condition true|false'; return; }
    _cronium_exec POST condition "{\"condition\":$value}" || _c_rc=$?
    ((_c_rc == 0)) || _cronium_fail cronium_set_condition "$_c_rc"
}

# cronium_get_condition: print true or false (false when unset)
cronium_get_condition() {
    local _c_status _c_data _c_error _c_rc=0
    (($# == 0)) || { _cronium_usage cronium_get_condition 'cronium_get_condition'; return; }
    _cronium_exec GET condition || _c_rc=$?
    ((_c_rc == 0)) || { _cronium_fail cronium_get_condition "$_c_rc"; return; }
    if [[ $_c_data == true ]]; then echo true; else echo false; fi
}

# cronium_event: print the context as JSON: event, execution, workflow, server, user
cronium_event() {
    local _c_status _c_data _c_error _c_rc=0
    (($# == 0)) || { _cronium_usage cronium_event 'cronium_event'; return; }
    _cronium_exec GET context || _c_rc=$?
    ((_c_rc == 0)) || { _cronium_fail cronium_event "$_c_rc"; return; }
    printf '%s\n' "$_c_data"
}

# cronium_event_field PATH: print one field of the context, a jq path such as .event.name or
# execution.attempt; strings are printed raw, other values as JSON, a missing field as null
cronium_event_field() {
    local _c_status _c_data _c_error _c_rc=0 path value
    [[ $# -eq 1 && -n ${1-} ]] || { _cronium_usage cronium_event_field 'cronium_event_field PATH  (like .event.name)'; return; }
    path=$1
    [[ $path == .* ]] || path=.$path
    _cronium_exec GET context || _c_rc=$?
    ((_c_rc == 0)) || { _cronium_fail cronium_event_field "$_c_rc"; return; }
    value=$(command jq -cr "$path" 2>/dev/null <<<"$_c_data") || { _cronium_fail cronium_event_field 2 "not a jq path of the context: $1"; return; }
    printf '%s\n' "$value"
}

# cronium_execute_tool_action TOOL ACTION [CONFIG_JSON]: run an action of a tool plugin and
# print its result as JSON. Not retried once the request may have been delivered.
cronium_execute_tool_action() {
    local _c_status _c_data _c_error _c_rc=0 config='{}' body
    [[ ($# -eq 2 || $# -eq 3) && -n ${1-} && -n ${2-} ]] || { _cronium_usage cronium_execute_tool_action 'cronium_execute_tool_action TOOL ACTION [CONFIG_JSON]'; return; }
    if (($# == 3)); then
        if ! _cronium_check_json config "$3" || ! command jq -e 'type == "object"' >/dev/null <<<"$config"; then
            _cronium_fail cronium_execute_tool_action 2 'CONFIG_JSON is not a JSON object'
            return
        fi
    fi
    body=$(command jq -cn --arg tool "$1" --arg action "$2" --argjson config "$config" \
        '{tool: $tool, action: $action, config: $config}')
    _cronium_call POST /tool-actions/execute "$body" 1 || _c_rc=$?
    ((_c_rc == 0)) || { _cronium_fail cronium_execute_tool_action "$_c_rc"; return; }
    printf '%s\n' "$_c_data"
}

# -- camelCase aliases, as Cronium's public docs spell them ---------------------------------------

croniumInput() { cronium_input "$@"; }
croniumOutput() { cronium_output "$@"; }
croniumGetVariable() { cronium_get_variable "$@"; }
croniumSetVariable() { cronium_set_variable "$@"; }
croniumSetCondition() { cronium_set_condition "$@"; }
croniumGetCondition() { cronium_get_condition "$@"; }
croniumEvent() { cronium_event "$@"; }
croniumEventField() { cronium_event_field "$@"; }
croniumExecuteToolAction() { cronium_execute_tool_action "$@"; }
croniumVariableExists() { cronium_variable_exists "$@"; }
croniumDeleteVariable() { cronium_delete_variable "$@"; }
croniumIncrementVariable() { cronium_increment_variable "$@"; }
croniumAppendVariable() { cronium_append_variable "$@"; }
