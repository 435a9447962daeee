using System.ComponentModel;
using System.Globalization;
using LiveMigration.Cli.Api;
using Spectre.Console;
using Spectre.Console.Cli;

namespace LiveMigration.Cli.Commands;

public sealed class AuditSettings : GlobalSettings
{
    [CommandOption("--since <TIME>")]
    [Description("Only requests made at or after TIME (ISO 8601, e.g. 2026-12-02T15:00:00Z; without an offset: UTC)")]
    public string? Since { get; set; }

    [CommandOption("--limit <N>")]
    [Description("At most N entries, newest first (1 to 1000; default 50)")]
    public int Limit { get; set; } = 50;

    [CommandOption("--before <NUMBER>")]
    [Description("Only entries numbered below NUMBER: the next page, as the previous page's last line says")]
    public long? Before { get; set; }

    public override ValidationResult Validate()
    {
        var basic = base.Validate();
        if (!basic.Successful) return basic;
        if (Since is not null && !DateTimeOffset.TryParse(Since, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out _))
            return ValidationResult.Error($"--since '{Since}' is not a time; expected ISO 8601 such as 2026-12-02T15:00:00Z");
        if (Limit is < 1 or > 1000)
            return ValidationResult.Error($"--limit {Limit} must be from 1 to 1000");
        if (Before is < 1)
            return ValidationResult.Error($"--before {Before} must be an entry number from 1");
        return ValidationResult.Success();
    }
}

/// <summary><c>lsm audit</c>: who changed what through the API (operator token), newest first, with each request's outcome.</summary>
public sealed class AuditCommand : AsyncCommand<AuditSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, AuditSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var query = $"/api/audit?limit={settings.Limit}";
        if (settings.Since is { } since)
            query += "&since=" + Uri.EscapeDataString(DateTimeOffset.Parse(since, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal).ToString("O"));
        if (settings.Before is { } before) query += $"&before={before}";
        var response = await api.GetAsync(query, ct);
        if (settings.Json)
        {
            Output.Json(response.Text);
            return ExitCodes.Ok;
        }
        var entries = response.Json.Array("entries").ToList();
        var table = new Table().AddColumns("#", "Time (UTC)", "Role", "Client", "Request", "Outcome");
        foreach (var e in entries)
            table.AddRow(e.Long("number").ToString(CultureInfo.InvariantCulture), Output.Escape(Time(e.Str("at"))), Output.Escape(e.Str("role")),
                Output.Escape(e.Str("client")), Output.Escape(Request(e)), Outcome(e));
        Output.Console.Write(table);
        if (entries.Count == 0) Output.Console.MarkupLine("no recorded changes" + (settings.Since is null && settings.Before is null ? "" : " in this range"));
        else if (response.Json.Long("next") is > 0 and var next) Output.Console.MarkupLine($"older entries: lsm audit --before {next}");
        return ExitCodes.Ok;
    }

    private static string Time(string at) =>
        DateTimeOffset.TryParse(at, CultureInfo.InvariantCulture, DateTimeStyles.None, out var t) ? t.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture) : at;

    /// <summary>The method and path, with the body when there is one worth showing (cut for the table; --json has it whole).</summary>
    private static string Request(System.Text.Json.JsonElement e)
    {
        var body = e.Str("body");
        if (body is "" or "{}") return $"{e.Str("method")} {e.Str("path")}";
        if (body.Length > 60) body = body[..60] + "…";
        return $"{e.Str("method")} {e.Str("path")} {body}";
    }

    private static string Outcome(System.Text.Json.JsonElement e)
    {
        var status = e.Long("status");
        if (status == 0) return "[yellow]no answer recorded[/]";
        var code = e.Str("errorCode");
        var text = Output.Escape(code.Length > 0 ? $"{status} {code}" : status.ToString(CultureInfo.InvariantCulture));
        return status < 400 ? $"[green]{text}[/]" : $"[red]{text}[/]";
    }
}
