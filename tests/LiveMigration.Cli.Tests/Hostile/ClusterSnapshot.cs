using LiveMigration.Cli.Local;
using System.Globalization;
using System.Text.Json;
using Microsoft.Data.Sqlite;

namespace LiveMigration.Cli.Tests.Hostile;

/// <summary>
/// Everything hostile input must leave as it was, as lines to compare: the inventory and the migrations through the
/// API, the cluster's members, every file and folder of the storage (name, size, mtime), the entries of the data
/// directory, and the journal's facts (rows per persistence id of the inventory and the sagas).
/// </summary>
public static class ClusterSnapshot
{
    public static async Task<IReadOnlyList<string>> TakeAsync(HostileCluster cluster)
    {
        var lines = new List<string>();
        using var http = cluster.Session.Http();
        foreach (var path in new[] { "/api/domains", "/api/vms", "/api/migrations" })
            lines.Add($"api {path} {await http.GetStringAsync(cluster.Session.Api + path)}");
        var members = JsonDocument.Parse(await http.GetStringAsync(cluster.Session.Api + "/api/cluster")).RootElement.GetProperty("members");
        lines.AddRange(members.EnumerateArray().Select(m => $"member {m.GetProperty("address").GetString()} {m.GetProperty("status").GetString()}"));

        lines.AddRange(Tree(cluster.Session.Storage, "storage"));
        // The domain root holds the SPM's lease, which its holder renews: not input's doing.
        lines.AddRange(Tree(LocalCluster.DomainRootOf(cluster.Session.DataDirectory), "domain-root").Where(l => !l.Contains("spm.lease")));
        lines.AddRange(Tree(cluster.EscapeTarget, "escape-target"));
        lines.AddRange(Directory.EnumerateFileSystemEntries(cluster.Session.DataDirectory).Select(e => $"data {Path.GetFileName(e)}").Order(StringComparer.Ordinal));
        lines.AddRange(Journal(cluster.JournalFile));
        return lines;
    }

    /// <summary>Lines that differ, each marked - (before only) or + (after only).</summary>
    public static string Difference(IReadOnlyList<string> before, IReadOnlyList<string> after) =>
        string.Join("\n", before.Except(after).Select(l => "- " + Clip(l)).Concat(after.Except(before).Select(l => "+ " + Clip(l))));

    private static string Clip(string line) => line.Length > 400 ? line[..400] + "…" : line;

    private static IEnumerable<string> Tree(string root, string label)
    {
        if (!Directory.Exists(root)) return [$"{label} absent"];
        var entries = new DirectoryInfo(root).EnumerateFileSystemInfos("*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0 });
        return entries
            .Select(e => $"{label} {Path.GetRelativePath(root, e.FullName)} {(e is FileInfo f ? f.Length.ToString(CultureInfo.InvariantCulture) : "dir")} {e.LastWriteTimeUtc.Ticks}")
            .Order(StringComparer.Ordinal)
            .ToList();
    }

    /// <summary>
    /// Rows and the highest sequence number per persistence id. Sharding's own bookkeeping (which entities it started
    /// and stopped, under /sharding/…) is left out: it is no fact about storage or a migration (an unknown id no longer
    /// wakes an entity at all: ApiSafetyTests checks that the journal stays unchanged). So is the audit trail: it records every attempt to
    /// change something, refused ones included, by design (ApiRoleAndAuditTests and LocalSecurityTests check that).
    /// </summary>
    private static IEnumerable<string> Journal(string file)
    {
        var readOnly = new SqliteConnectionStringBuilder { DataSource = file, Mode = SqliteOpenMode.ReadOnly, Pooling = false }.ToString();
        using var connection = new SqliteConnection(readOnly);
        connection.Open();
        using var command = connection.CreateCommand();
        command.CommandText = "SELECT persistence_id, COUNT(*), MAX(sequence_number) FROM journal WHERE persistence_id NOT LIKE '/sharding/%' AND persistence_id NOT LIKE '/system/sharding/%' AND persistence_id <> 'audit' GROUP BY persistence_id ORDER BY persistence_id";
        using var reader = command.ExecuteReader();
        var lines = new List<string>();
        while (reader.Read())
            lines.Add($"journal {reader.GetString(0)} rows {reader.GetInt64(1)} max {reader.GetInt64(2)}");
        return lines;
    }
}
