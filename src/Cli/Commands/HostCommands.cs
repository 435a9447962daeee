using System.ComponentModel;
using LiveMigration.Cli.Api;
using Spectre.Console;
using Spectre.Console.Cli;

namespace LiveMigration.Cli.Commands;

public sealed class HostForgetSettings : GlobalSettings
{
    [CommandArgument(0, "<HOST>")]
    [Description("The host's id, as `lsm hosts` lists it, e.g. host-3")]
    public string Host { get; set; } = "";

    public override ValidationResult Validate()
    {
        var basic = base.Validate();
        if (!basic.Successful) return basic;
        return string.IsNullOrWhiteSpace(Host) ? ValidationResult.Error("HOST is required, e.g. lsm host forget host-3") : ValidationResult.Success();
    }
}

/// <summary><c>lsm host forget HOST</c>: a host gone for good leaves the inventory (refused while it is a cluster member).</summary>
public sealed class HostForgetCommand : AsyncCommand<HostForgetSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, HostForgetSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var answer = await api.PostAsync($"/api/hosts/{Uri.EscapeDataString(settings.Host)}/forget", null, ct);
        if (settings.Json)
        {
            Output.Json(answer.Text);
            return ExitCodes.Ok;
        }
        Output.Console.MarkupLine($"host [bold]{Output.Escape(settings.Host)}[/] forgotten, with the {answer.Json.Long("vms")} VM(s) it last reported; " +
                                  "it holds no domain inactive any more (a host that reports again is known again)");
        return ExitCodes.Ok;
    }
}
