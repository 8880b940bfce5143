# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_relay_global_optspecs
    string join \n h/help V/version
end

function __fish_relay_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_relay_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_relay_using_subcommand
    set -l cmd (__fish_relay_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c relay -n "__fish_relay_needs_command" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_needs_command" -s V -l version -d 'Print version'
complete -c relay -n "__fish_relay_needs_command" -f -a "run" -d 'Run one relay instance in the foreground (what relay@NAME.service runs)'
complete -c relay -n "__fish_relay_needs_command" -f -a "status" -d 'Show what a running instance has on air and how it is doing (exit status 3 if it is not running); without a name, one line for every instance on the host, running or not'
complete -c relay -n "__fish_relay_needs_command" -f -a "switch" -d 'Override what is on air until `relay switch NAME auto`'
complete -c relay -n "__fish_relay_needs_command" -f -a "zmq" -d 'Send one raw command to the output FFmpeg\'s zmq filter, on the instance\'s ZMQ_PORT, and print the reply (to change what is on air, use `relay switch`)'
complete -c relay -n "__fish_relay_needs_command" -f -a "check" -d 'Check the configuration, FFmpeg, the offline video and the stat page without starting anything (exit 0 if all ok, 78 if the configuration does not load, else 1)'
complete -c relay -n "__fish_relay_needs_command" -f -a "demo" -d 'Run relay on a self-contained demo: a private nginx-rtmp on loopback, a generated offline video, output to a local preview stream'
complete -c relay -n "__fish_relay_using_subcommand run" -l config -d 'Read this .toml or .env file instead' -r -F
complete -c relay -n "__fish_relay_using_subcommand run" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand status" -l socket -d 'Use this control socket instead' -r -F
complete -c relay -n "__fish_relay_using_subcommand status" -l json -d 'Print stable JSON (field names documented in `relay::api`)'
complete -c relay -n "__fish_relay_using_subcommand status" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand switch" -l socket -d 'Use this control socket instead' -r -F
complete -c relay -n "__fish_relay_using_subcommand switch" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c relay -n "__fish_relay_using_subcommand zmq" -l config -d 'Read this .toml or .env file instead of NAME\'s configuration' -r -F
complete -c relay -n "__fish_relay_using_subcommand zmq" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c relay -n "__fish_relay_using_subcommand check" -l config -d 'Read this .toml or .env file instead' -r -F
complete -c relay -n "__fish_relay_using_subcommand check" -s h -l help -d 'Print help'
complete -c relay -n "__fish_relay_using_subcommand demo" -l res -d 'Output height (16:9)' -r
complete -c relay -n "__fish_relay_using_subcommand demo" -s h -l help -d 'Print help'
