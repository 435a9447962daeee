using System.ComponentModel;
using LiveMigration.Cli.Api;
using Spectre.Console;
using Spectre.Console.Cli;

namespace LiveMigration.Cli.Commands;

/// <summary><c>lsm cluster show</c>: every member with its status and roles, the leader, the unreachable ones.</summary>
public sealed class ClusterShowCommand : AsyncCommand<GlobalSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, GlobalSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var cluster = await api.GetAsync("/api/cluster", ct);
        if (settings.Json)
        {
            Output.Json(cluster.Text);
            return ExitCodes.Ok;
        }
        var json = cluster.Json;
        var table = new Table().AddColumns("Address", "Status", "Roles", "Reachable", "");
        foreach (var m in json.Array("members"))
        {
            var address = m.Str("address");
            var notes = new List<string>();
            if (address == json.Str("leader")) notes.Add("leader");
            if (address == json.Str("self")) notes.Add("API node");
            var status = m.Str("status");
            table.AddRow(
                Output.Escape(address),
                status == "up" ? $"[green]{status}[/]" : $"[yellow]{Output.Escape(status)}[/]",
                Output.Escape(string.Join(",", m.Array("roles").Select(r => r.GetString()))),
                m.Bool("reachable") ? "yes" : "[red]no[/]",
                string.Join(", ", notes));
        }
        Output.Console.Write(table);
        var unreachable = json.Array("unreachable").Select(u => u.GetString()).ToList();
        Output.Console.MarkupLine(unreachable.Count == 0
            ? "no unreachable members"
            : $"[red]unreachable:[/] {Output.Escape(string.Join(", ", unreachable))}");
        return ExitCodes.Ok;
    }
}

public sealed class ClusterAddressSettings : GlobalSettings
{
    [CommandArgument(0, "<ADDRESS>")]
    [Description("A member's address, as `lsm cluster show` lists it: akka.tcp://lsm@127.0.0.1:4053")]
    public string Address { get; set; } = "";

    public override ValidationResult Validate()
    {
        var basic = base.Validate();
        if (!basic.Successful) return basic;
        // The same rule as the API, checked before any request: only this cluster's akka.tcp addresses.
        return Uri.TryCreate(Address, UriKind.Absolute, out var uri) && uri.Scheme == "akka.tcp" && uri.UserInfo == "lsm" && uri.Port > 0 && uri.AbsolutePath is "" or "/"
            ? ValidationResult.Success()
            : ValidationResult.Error($"'{Address}' is not a member address like akka.tcp://lsm@127.0.0.1:4053");
    }
}

/// <summary>leave, down and join: one POST each to /api/cluster/{action} with the member's address.</summary>
public abstract class ClusterMembershipCommand(string action) : AsyncCommand<ClusterAddressSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, ClusterAddressSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var answer = await api.PostAsync($"/api/cluster/{action}", new { address = settings.Address }, ct);
        if (settings.Json) Output.Json(answer.Text);
        else Output.Console.MarkupLine(Output.Escape(answer.Json.Str("message")));
        return ExitCodes.Ok;
    }
}

public sealed class ClusterLeaveCommand() : ClusterMembershipCommand("leave");

public sealed class ClusterDownCommand() : ClusterMembershipCommand("down");

public sealed class ClusterJoinCommand() : ClusterMembershipCommand("join");

/// <summary><c>lsm cluster sharding regions</c>: the shard region types with their shard and entity counts per node.</summary>
public sealed class ShardingRegionsCommand : AsyncCommand<GlobalSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, GlobalSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var regions = await api.GetAsync("/api/cluster/sharding/regions", ct);
        if (settings.Json)
        {
            Output.Json(regions.Text);
            return ExitCodes.Ok;
        }
        var table = new Table().AddColumns("Type", "Node", "Shards", "Entities");
        foreach (var r in regions.Json.Array("regions"))
        {
            var type = Output.Escape(r.Str("typeName"));
            if (r.Str("error") is { Length: > 0 } error)
            {
                table.AddRow(type, $"[red]{Output.Escape(error)}[/]", "", "");
                continue;
            }
            table.AddRow($"[bold]{type}[/]", "all", r.Long("shards").ToString(), r.Long("entities").ToString());
            foreach (var n in r.Array("nodes"))
                table.AddRow("", Output.Escape(n.Str("address")), n.Long("shards").ToString(), n.Long("entities").ToString());
        }
        Output.Console.Write(table);
        return ExitCodes.Ok;
    }
}
