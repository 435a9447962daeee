using System.Runtime.CompilerServices;
using System.Text;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Protocol;
using LiveMigration.Shared.Serialization;

namespace LiveMigration.Shared.Tests.Serialization;

/// <summary>
/// Journal compatibility: the bytes of each persisted event are checked in under Golden/. A change to an event,
/// its model records or the JSON options that would alter them (and so risk the replay of journals written
/// before) fails here. Regenerate only on purpose, with a new manifest or a reader for the old shape in place:
/// <c>LM_REGENERATE_GOLDEN=1 dotnet test tests/LiveMigration.Shared.Tests --filter JournalGoldenTests</c>.
/// </summary>
public sealed class JournalGoldenTests(ActorSystemFixture fixture) : IClassFixture<ActorSystemFixture>
{
    private const string RegenerateVariable = "LM_REGENERATE_GOLDEN";
    private readonly ProtocolSerializer _serializer = fixture.Serializer;

    private static IEnumerable<string> EventManifestList =>
        ProtocolManifests.All
            .Where(e => typeof(IMigrationEvent).IsAssignableFrom(e.Type) || typeof(IInventoryEvent).IsAssignableFrom(e.Type)
                        || typeof(IAuditEvent).IsAssignableFrom(e.Type)
                        // the inventory's snapshot store holds it: a recovery reads it back like an event
                        || e.Type == typeof(InventorySnapshot) || e.Type == typeof(AuditSnapshot))
            .Select(e => e.Manifest);

    public static TheoryData<string> EventManifests() => new(EventManifestList);

    [Theory]
    [MemberData(nameof(EventManifests))]
    public void Each_event_serializes_to_its_checked_in_golden_bytes_and_the_golden_bytes_read_back(string manifest)
    {
        Assert.True(ProtocolManifests.TryGetType(manifest, out var type));
        var sample = ProtocolSamples.For(type)[0];
        var actual = Encoding.UTF8.GetString(_serializer.ToBinary(sample));
        var path = Path.Combine(GoldenDirectory(), manifest + ".json");

        if (Environment.GetEnvironmentVariable(RegenerateVariable) == "1")
        {
            File.WriteAllText(path, actual + "\n");
            return;
        }
        if (!File.Exists(path))
        {
            File.WriteAllText(path, actual + "\n");
            Assert.Fail($"{path} did not exist and was written now from the current serializer: review it, commit it, and run again");
        }

        var golden = File.ReadAllText(path).TrimEnd('\n');
        Assert.True(golden == actual,
            $"the journal form of {manifest} changed, so journals written before may not replay.\n" +
            $"golden ({path}):\n{golden}\nnow:\n{actual}\n" +
            $"If the change is intended and old payloads still read (or a new manifest took its place), regenerate with " +
            $"{RegenerateVariable}=1 dotnet test tests/LiveMigration.Shared.Tests --filter JournalGoldenTests");
        // what an old journal holds must still read as the same event
        Assert.Equal(sample, _serializer.FromBinary(Encoding.UTF8.GetBytes(golden), manifest));
    }

    [Fact]
    public void Every_golden_file_belongs_to_a_registered_event()
    {
        var files = Directory.GetFiles(GoldenDirectory(), "*.json").Select(Path.GetFileNameWithoutExtension).ToList();
        var events = EventManifestList.ToHashSet();

        Assert.NotEmpty(files);
        // a golden file left without its event means a manifest was dropped: old journals holding it would not replay
        Assert.All(files, file => Assert.Contains(file!, events));
    }

    private static string GoldenDirectory([CallerFilePath] string thisFile = "") =>
        Path.Combine(Path.GetDirectoryName(Path.GetDirectoryName(thisFile)!)!, "Golden");

    [Fact]
    public void A_release_with_settling_disks_reads_back_whole_and_one_without_keeps_the_old_form()
    {
        var settling = new DisksReleasedByMigration(Shared.Model.MigrationId.New(), [Shared.Model.ImageId.New()], DateTimeOffset.UnixEpoch,
            [new DiskPlace(Shared.Model.ImageId.New(), Shared.Model.DomainId.New())]);
        var manifest = _serializer.Manifest(settling);
        Assert.Equal(settling, _serializer.FromBinary(_serializer.ToBinary(settling), manifest));
        var plain = settling with { Settling = null };
        Assert.DoesNotContain("settling", Encoding.UTF8.GetString(_serializer.ToBinary(plain)));
    }
}
