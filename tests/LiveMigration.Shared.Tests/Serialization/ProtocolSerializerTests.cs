using System.Runtime.Serialization;
using System.Text;
using System.Text.Json;
using Akka.Actor;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using LiveMigration.Shared.Serialization;

namespace LiveMigration.Shared.Tests.Serialization;

public sealed class ActorSystemFixture : IAsyncLifetime
{
    public ExtendedActorSystem System { get; private set; } = null!;
    public ProtocolSerializer Serializer { get; private set; } = null!;

    public Task InitializeAsync()
    {
        System = (ExtendedActorSystem)ActorSystem.Create("serializer-tests", ProtocolSerialization.Hocon);
        Serializer = new ProtocolSerializer(System);
        return Task.CompletedTask;
    }

    public Task DisposeAsync() => System.Terminate();
}

public sealed class ProtocolSerializerTests(ActorSystemFixture fixture) : IClassFixture<ActorSystemFixture>
{
    private readonly ProtocolSerializer _serializer = fixture.Serializer;

    public static TheoryData<string> RegisteredManifests() => new(ProtocolManifests.All.Select(e => e.Manifest));

    [Theory]
    [MemberData(nameof(RegisteredManifests))]
    public void Each_message_round_trips_to_an_equal_value_and_the_same_bytes(string manifest)
    {
        Assert.True(ProtocolManifests.TryGetType(manifest, out var type));
        foreach (var sample in ProtocolSamples.For(type))
        {
            var bytes = _serializer.ToBinary(sample);
            Assert.Equal(manifest, _serializer.Manifest(sample));

            var back = _serializer.FromBinary(bytes, manifest);

            Assert.IsType(type, back);
            Assert.Equal(sample, back);
            // record equality ignores a DateTimeOffset's offset; the bytes do not
            Assert.Equal(Encoding.UTF8.GetString(bytes), Encoding.UTF8.GetString(_serializer.ToBinary(back)));
        }
    }

    [Fact]
    public void Ids_are_plain_uuid_strings_operation_ids_their_string_form_enums_names_and_durations_constant_form()
    {
        var retry = (RetryScheduled)ProtocolSamples.For(typeof(RetryScheduled))[0];
        var step = (ExecuteStep)ProtocolSamples.For(typeof(ExecuteStep))[0];

        var retryJson = JsonDocument.Parse(_serializer.ToBinary(retry)).RootElement;
        var stepJson = JsonDocument.Parse(_serializer.ToBinary(step)).RootElement;

        Assert.Equal(retry.MigrationId.ToString(), retryJson.GetProperty("migrationId").GetString());
        Assert.Equal(retry.Image.ToString(), retryJson.GetProperty("image").GetString());
        Assert.Equal("Pivot", retryJson.GetProperty("step").GetString());
        Assert.Equal("00:00:01.5000000", retryJson.GetProperty("delay").GetString());
        Assert.Equal("2025-03-14T15:09:26.5350000+02:00", retryJson.GetProperty("at").GetString());
        Assert.Equal(step.Operation.ToString(), stepJson.GetProperty("operation").GetString());
        Assert.Equal("WriteBlocking", stepJson.GetProperty("copyMode").GetString());
        Assert.Equal(step.Disk.NewLeaf.ToString(), stepJson.GetProperty("disk").GetProperty("newLeaf").GetString());
    }

    [Fact]
    public void Computed_properties_are_not_written_only_constructor_state()
    {
        var start = (StartMigration)ProtocolSamples.For(typeof(StartMigration))[1];

        var request = JsonDocument.Parse(_serializer.ToBinary(start)).RootElement.GetProperty("request");

        Assert.False(request.TryGetProperty("retryPolicy", out _), request.GetRawText());
        Assert.Equal(JsonValueKind.Null, request.GetProperty("retry").ValueKind);
    }

    [Fact]
    public void An_unknown_manifest_is_refused_with_a_serialization_exception_naming_it()
    {
        var error = Assert.Throws<SerializationException>(() => _serializer.FromBinary("{}"u8.ToArray(), "lm.FromTheFuture.v9"));

        Assert.Contains("'lm.FromTheFuture.v9'", error.Message);
    }

    [Fact]
    public void A_type_without_a_manifest_is_refused_naming_the_type()
    {
        var plan = new DiskPlan(ImageId.New(), DomainId.New(), DomainId.New(), 1, VolumeId.New());

        var error = Assert.Throws<SerializationException>(() => _serializer.ToBinary(plan));

        Assert.Contains(typeof(DiskPlan).FullName!, error.Message);
        Assert.Throws<SerializationException>(() => _serializer.Manifest(plan));
    }

    [Fact]
    public void A_malformed_id_is_refused_naming_the_manifest_and_the_bad_value()
    {
        var payload = """{"migrationId":"../../etc","at":"2025-03-14T15:09:26.5350000+02:00"}"""u8.ToArray();

        var error = Assert.Throws<SerializationException>(() => _serializer.FromBinary(payload, "lm.MigrationAdmitted.v1"));

        Assert.Contains("lm.MigrationAdmitted.v1", error.Message);
        Assert.Contains("../../etc", error.Message);
    }

    [Fact]
    public void A_missing_field_without_a_default_is_refused_naming_it()
    {
        var payload = """{"migrationId":"6d1f4a52-0b8e-4c1e-9a57-3f0c2b9e7a11"}"""u8.ToArray();

        var error = Assert.Throws<SerializationException>(() => _serializer.FromBinary(payload, "lm.MigrationAdmitted.v1"));

        Assert.Contains("at", error.Message);
    }

    [Fact]
    public void Null_where_the_record_forbids_it_is_refused()
    {
        var payload = """{"migrationId":"6d1f4a52-0b8e-4c1e-9a57-3f0c2b9e7a11","reason":null,"at":"2025-03-14T15:09:26.5350000+02:00"}"""u8.ToArray();

        Assert.Throws<SerializationException>(() => _serializer.FromBinary(payload, "lm.MigrationCancelled.v1"));
    }

    [Fact]
    public void An_older_payload_without_an_optional_field_reads_with_its_default_and_unknown_fields_are_skipped()
    {
        // what an older writer (no "reason") and a newer writer (an extra field) produce: both still read
        var payload = """{"migrationId":"6d1f4a52-0b8e-4c1e-9a57-3f0c2b9e7a11","addedLater":{"x":1}}"""u8.ToArray();

        var cancel = Assert.IsType<CancelMigration>(_serializer.FromBinary(payload, "lm.CancelMigration.v1"));

        Assert.Equal(new CancelMigration(MigrationId.Parse("6d1f4a52-0b8e-4c1e-9a57-3f0c2b9e7a11")), cancel);
    }

    [Fact]
    public void A_new_disk_written_before_disk_shapes_reads_as_a_sparse_raw_base()
    {
        var payload = """{"vm":"b3a9e1c4-5d2f-4e8a-8c6b-1f7d9e0a2b33","disks":[{"sizeBytes":1048576,"domain":"a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d","snapshots":2}]}"""u8.ToArray();

        var create = Assert.IsType<CreateVmDisks>(_serializer.FromBinary(payload, "lm.CreateVmDisks.v1"));

        Assert.Equal(new NewDisk(1_048_576, DomainId.Parse("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"), 2, VolumeFormat.Raw, VolumeAllocation.Sparse),
            Assert.Single(create.Disks));
    }

    [Fact]
    public void A_drive_report_journaled_before_disk_shapes_reads_with_its_base_shape_unknown()
    {
        // lm.HostReported.v1 exactly as its golden file held it before DriveReport told the base's format and allocation
        var payload = """{"hostId":"host-1","address":"akka.tcp://lsm@10.0.0.11:4053","spmCapable":true,"vms":[{"id":"b3a9e1c4-5d2f-4e8a-8c6b-1f7d9e0a2b33","name":"web-01 (élan)","running":true,"drives":[{"image":"0c5e8f21-7a4b-4d93-b1e6-9a2c3d4e5f60","chain":[{"domain":"a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d","volume":"3b4c5d6e-7f80-4192-a3b4-c5d6e7f80912"},{"domain":"f0e1d2c3-b4a5-4968-8776-655443322110","volume":"4c5d6e7f-8091-42a3-b4c5-d6e7f8091a2b"}],"capacityBytes":8589934592,"allocatedBytes":4294967296},{"image":"1e2d3c4b-5a69-4788-96a5-b4c3d2e1f0a9","chain":[{"domain":"a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d","volume":"3b4c5d6e-7f80-4192-a3b4-c5d6e7f80912"}],"capacityBytes":2147483648,"allocatedBytes":1048576}]}],"at":"2025-03-14T15:09:26.5350000+02:00"}"""u8.ToArray();

        var reported = Assert.IsType<HostReported>(_serializer.FromBinary(payload, "lm.HostReported.v1"));

        var drives = Assert.Single(reported.Vms).Drives;
        Assert.Equal([4_294_967_296L, 1_048_576L], drives.Select(d => d.AllocatedBytes));
        Assert.All(drives, d => Assert.Null(d.BaseFormat));
        Assert.All(drives, d => Assert.Null(d.BaseAllocation));
    }

    [Fact]
    public void The_identifier_is_fixed_above_akkas_reserved_range()
    {
        Assert.Equal(4_711, _serializer.Identifier);
        Assert.True(_serializer.Identifier > 100);
    }
}
