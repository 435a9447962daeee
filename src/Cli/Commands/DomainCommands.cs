using System.ComponentModel;
using LiveMigration.Cli.Api;
using Spectre.Console;
using Spectre.Console.Cli;

namespace LiveMigration.Cli.Commands;

public sealed class DomainCreateSettings : GlobalSettings
{
    [CommandArgument(0, "<NAME>")]
    [Description("The new domain's name, e.g. fast-ssd")]
    public string Name { get; set; } = "";

    [CommandOption("--path <DIR>")]
    [Description("The folder the domain is made under (<DIR>/<domain id>); every host must see it at the same path (shared storage)")]
    public string? Path { get; set; }

    [CommandOption("--capacity <SIZE>")]
    [Description("The domain's capacity limit, e.g. 10GiB; default: the free space under DIR")]
    public string? Capacity { get; set; }

    public long CapacityBytes => Capacity is null ? 0 : ByteRate.TryParse(Capacity, out var b) ? b : 0;

    public override ValidationResult Validate()
    {
        var basic = base.Validate();
        if (!basic.Successful) return basic;
        if (string.IsNullOrWhiteSpace(Name))
            return ValidationResult.Error("NAME is required, e.g. lsm domain create fast-ssd --path /srv/lsm/domains");
        if (string.IsNullOrWhiteSpace(Path))
            return ValidationResult.Error("--path DIR is required: the folder the domain is made under");
        if (Capacity is not null && (!ByteRate.TryParse(Capacity, out var bytes) || bytes <= 0))
            return ValidationResult.Error($"--capacity '{Capacity}' is not a size like 10GiB or 512MiB");
        return ValidationResult.Success();
    }
}

/// <summary><c>lsm domain create NAME --path DIR [--capacity SIZE]</c>: the SPM makes a file domain; every host attaches it.</summary>
public sealed class DomainCreateCommand : AsyncCommand<DomainCreateSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, DomainCreateSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var body = new { name = settings.Name, path = System.IO.Path.GetFullPath(settings.Path!), capacityBytes = settings.CapacityBytes };
        var created = await api.PostAsync("/api/domains", body, ct);
        if (settings.Json)
        {
            Output.Json(created.Text);
            return ExitCodes.Ok;
        }
        var d = created.Json;
        Output.Console.MarkupLine($"storage domain [bold]{Output.Escape(d.Str("name"))}[/] created: {Output.Escape(d.Str("id"))}, " +
                                  $"capacity {ByteRate.Format(d.Long("capacityBytes"))}, free {ByteRate.Format(d.Long("availableBytes"))}");
        return ExitCodes.Ok;
    }
}
